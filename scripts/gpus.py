"""The GPUs of this machine as NVML sees them, and which ones a launch would get.

    python scripts/gpus.py                  # index, UUID, name, memory, utilisation, MIG instances
    python scripts/gpus.py --choose 2       # what a launch of 2 processes gets (CUDA_VISIBLE_DEVICES)
    python scripts/gpus.py --json           # the same as JSON

A training stage with `launcher.num_processes: N` takes the N GPUs with the most free memory
(among those CUDA_VISIBLE_DEVICES names, when it is set). Without an NVIDIA driver the list is
empty and the line above it says why; the stages then run on the CPU.
"""

import argparse
import dataclasses
import json

from spark_trainer import gpus
from spark_trainer.stage import entrypoint


def rows(devices: list[gpus.Device]) -> list[list[str]]:
    out = []
    for gpu in devices:
        for d in [gpu, *gpu.mig]:
            util = "-" if d.utilization is None else f"{d.utilization}%"
            mig = "on" if d.mig_enabled else ("" if d.mig_index is not None else "off")
            out.append([d.label, d.name, f"{d.free_mib:,}", f"{d.total_mib:,}", util, mig, d.uuid])
    return out


def table(devices: list[gpus.Device]) -> str:
    head = ["device", "name", "free MiB", "total MiB", "util", "MIG", "uuid"]
    body = rows(devices)
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    right = {2, 3, 4}  # numbers align right
    fmt = lambda r: "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(head), *(fmt(r) for r in body)])


@entrypoint
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--choose", type=int, metavar="N", help="also show what a launch of N processes gets")
    parser.add_argument("--min-free-mib", type=int, default=0, help="with --choose: MiB each GPU must have free")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    devices, reason = gpus.inventory()
    choice = gpus.choose(args.choose, args.min_free_mib) if args.choose else None  # a refusal exits 2
    if args.json:
        out = {"reason": reason, "devices": [dataclasses.asdict(d) for d in devices]}
        if choice:
            out["choice"] = dataclasses.asdict(choice)
        print(json.dumps(out, indent=2))
        return
    print(reason)
    if devices:
        print(table(devices))
    if choice:
        print(f"\n--choose {args.choose}: {choice.reason}")
        print(f"CUDA_VISIBLE_DEVICES={choice.visible_devices}" if choice.visible_devices else
              "CUDA_VISIBLE_DEVICES: left as it is (no GPU)")


if __name__ == "__main__":
    main()
