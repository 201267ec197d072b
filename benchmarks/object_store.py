"""The S3 blob store next to the file store: baseline TTS and TTR of one model, and the memory a 1 GiB blob takes.

Run from the repository root: ``python -m benchmarks.object_store [--model resnet50] [--repeats 5]
[--blob-mib 1024]``. Starts moto's S3 server on a free local port (or uses MMLIB_TEST_S3_URI and the standard
AWS variables). Both stores keep their documents in SQLite in a temp directory; the blobs go to files in that
directory or to the bucket. Anchors: plain ``torch.save`` of the state dict and ``torch.load(weights_only=True)``
+ construct + ``load_state_dict`` of that file, timed in the same interleaved rounds (medians, one untimed
warm-up round). The memory part uploads a blob of ``--blob-mib`` MiB produced 16 MiB at a time and streams it
back into a file (`recover_file`), reporting Python's traced peak for each: it should stay near part size x
parallel parts, not grow with the blob.
"""

import argparse
import os
import tempfile
import time
import tracemalloc
from typing import Any, Callable

import torch

from benchmarks.common import ANCHOR, MODEL_LABELS, median_seconds, raw_load, ratio
from mmlib.models import REFERENCE_MODELS
from mmlib.persistence import FileReference, open_store
from mmlib.persistence._s3 import ObjectStoreFilePersistenceService
from mmlib.save import BaselineSaveService
from mmlib.schema.save_info_builder import ModelSaveInfoBuilder
from mmlib.testing.s3_server import fresh_prefix, start_s3_server
from mmlib.track_env import track_current_environment

MIB = 1024 * 1024


def timings(model_key: str, repeats: int, work_dir: str, s3_location: str) -> dict[str, Any]:
    """Median TTS and TTR (checks on and off) of the baseline on the file store and on S3, with the anchors."""
    model = REFERENCE_MODELS[model_key]()
    env = track_current_environment()
    services = {"file store": BaselineSaveService(*open_store(os.path.join(work_dir, "files"))),
                "S3": BaselineSaveService(*open_store(os.path.join(work_dir, "s3-docs"),
                                                      blob_dir=fresh_prefix(s3_location)))}
    anchor_path = os.path.join(work_dir, "anchor.pt")
    saved: dict[str, str] = {}

    def save(name: str) -> Callable[[int], Callable[[], Any]]:
        def prepare(_round: int) -> Callable[[], Any]:
            with torch.no_grad():
                next(model.parameters()).add_(1e-3)  # a new version each round: nothing is found stored
            info = ModelSaveInfoBuilder().add_model_info(env=env, model=model).build()
            return lambda: saved.__setitem__(name, services[name].save_model(info))
        return prepare

    tts = median_seconds({ANCHOR: lambda _round: lambda: torch.save(model.state_dict(), anchor_path),
                          **{name: save(name) for name in services}}, repeats)
    recover_steps = {ANCHOR: lambda _round: lambda: raw_load(REFERENCE_MODELS[model_key], anchor_path)}
    for name in services:
        for checks in (True, False):
            recover_steps[f"{name}/{checks}"] = (
                lambda _round, name=name, checks=checks: lambda: services[name].recover_model(saved[name], checks))
    ttr = median_seconds(recover_steps, repeats)
    rows = {ANCHOR: {"tts_s": tts[ANCHOR]["median_s"], "ttr_s": ttr[ANCHOR]["median_s"]}}
    for name in services:
        rows[name] = {"tts_s": tts[name]["median_s"], "ttr_checks_s": ttr[f"{name}/True"]["median_s"],
                      "ttr_no_checks_s": ttr[f"{name}/False"]["median_s"]}
    return rows


def blob_memory(s3_location: str, blob_mib: int, work_dir: str) -> dict[str, float]:
    """Traced peak memory and time of uploading a `blob_mib` MiB blob and streaming it back into a file."""
    store = ObjectStoreFilePersistenceService(fresh_prefix(s3_location))
    piece = os.urandom(16 * MIB)

    def produce(sink) -> None:
        for index in range(blob_mib // 16):
            sink.write(index.to_bytes(8, "little") + piece[8:])  # distinct pieces, produced as they are written

    tracemalloc.start()
    try:
        started = time.perf_counter()
        digest = store.write_stream(produce)
        upload_s, upload_peak = time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        started = time.perf_counter()
        store.recover_file(FileReference(reference_id=f"{digest}/blob.bin"), work_dir)
        download_s, download_peak = time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    store.delete_blob(digest)
    return {"blob_mib": blob_mib, "part_mib": store.part_size / MIB, "parallel_parts": store.parallel_parts,
            "upload_s": upload_s, "upload_peak_mib": upload_peak / MIB,
            "download_s": download_s, "download_peak_mib": download_peak / MIB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", choices=sorted(REFERENCE_MODELS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--blob-mib", type=int, default=1024, help="size of the memory test's blob (0: skip)")
    parser.add_argument("--work-dir", help="where the stores and anchor files are written (default: system temp)")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mmlib-s3-bench-", dir=arguments.work_dir) as work_dir:
        servers = start_s3_server(os.path.join(work_dir, "s3-server.log"))
        location = next(servers)
        try:
            rows = timings(arguments.model, arguments.repeats, work_dir, location)
            memory = blob_memory(location, arguments.blob_mib, work_dir) if arguments.blob_mib else None
        finally:
            servers.close()
    anchor = rows.pop(ANCHOR)
    label = MODEL_LABELS.get(arguments.model, arguments.model)
    print(f"## Baseline {label} on the file store and on S3 (moto's server on this machine)\n")
    print(f"Anchors: torch.save {anchor['tts_s'] * 1e3:.1f} ms; torch.load + construct + load_state_dict "
          f"{anchor['ttr_s'] * 1e3:.1f} ms; medians of {arguments.repeats} interleaved rounds.\n")
    print("| blob store | TTS ms | / torch.save | TTR checks ms | / raw load | TTR no checks ms | / raw load |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['tts_s'] * 1e3:.1f} | {ratio(row['tts_s'], anchor['tts_s']):.2f}x | "
              f"{row['ttr_checks_s'] * 1e3:.1f} | {ratio(row['ttr_checks_s'], anchor['ttr_s']):.2f}x | "
              f"{row['ttr_no_checks_s'] * 1e3:.1f} | {ratio(row['ttr_no_checks_s'], anchor['ttr_s']):.2f}x |")
    if memory:
        print(f"\n{memory['blob_mib']} MiB blob, {memory['parallel_parts']} parallel parts of "
              f"{memory['part_mib']:.0f} MiB: upload {memory['upload_s']:.1f} s, traced peak "
              f"{memory['upload_peak_mib']:.1f} MiB; streamed download {memory['download_s']:.1f} s, traced peak "
              f"{memory['download_peak_mib']:.1f} MiB")


if __name__ == "__main__":
    main()
