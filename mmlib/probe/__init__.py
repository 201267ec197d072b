"""Record what every layer sees and produces in one inference or training step, to find where two runs diverge.

``probe_inference`` / ``probe_training`` return a ``ProbeSummary``: per layer call, the ``ProbeInfo`` fields
(indices, name, shapes, input/output tensors and, in training, gradients). Summaries compare with ``==``,
``first_divergence`` and ``compare_to``, print with ``print_summary``, and save and load as files.

Modules: ``recorder`` (the hooks and the two probe functions), ``graph`` (the autograd nodes a layer call created),
``info`` (``ProbeInfo``, ``ProbeMode``, ``LayerInfo``), ``summary`` (``ProbeSummary``, its file format) and
``compare`` (matching layers of two summaries, equality, tables).
"""

from mmlib.probe.info import LayerInfo, ProbeInfo, ProbeMode
from mmlib.probe.summary import ProbeSummary
from mmlib.probe.recorder import probe_inference, probe_training

__all__ = ["LayerInfo", "ProbeInfo", "ProbeMode", "ProbeSummary", "probe_inference", "probe_training"]
