"""Save a ResNet-18 with the baseline approach on the embedded store, recover it and check it is equal.

The example lives in the package (`mmlib.demo.baseline`, so installed copies have it too); this script
runs it from a source checkout.

Run: .venv/bin/python examples/baseline_save.py [--store DIR]
"""

from mmlib.demo.baseline import main

if __name__ == "__main__":
    main()
