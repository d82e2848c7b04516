"""Run the pipeline with a params profile (configs/profiles/<name>.yaml) as one DVC experiment.

    python scripts/exp_profile.py smollm2              # run it in this workspace: dvc exp run -n smollm2 -S ...
    python scripts/exp_profile.py smollm2 --queue      # queue it instead (then: dvc queue start)
    python scripts/exp_profile.py smollm2 --print      # only print the dvc command
    python scripts/exp_profile.py smollm2 lora@arithmetic   # only the stages up to lora@arithmetic
    python scripts/exp_profile.py smollm2 -S lora.max_steps=120     # the profile, and one more change
    python scripts/exp_profile.py smollm2 --save       # copy the experiment's metrics and reports to results/smollm2/

The profile is checked against params.yaml first (an unknown key names the closest valid
one). After a workspace run, `git checkout params.yaml dvc.lock metrics reports && dvc checkout`
returns the workspace to the default profile; the experiment stays in `dvc exp show`.
`--save` leaves out the metrics of stages the experiment did not run under its params (a run
with targets keeps the baseline's files for the others) and lists those stages on the page.
"""

import argparse
import shlex
import subprocess
import sys

from spark_trainer import profiles
from spark_trainer.stage import entrypoint


@entrypoint
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", help=f"one of: {', '.join(profiles.available()) or 'none'}")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--queue", action="store_true", help="queue the experiment (dvc exp run --queue)")
    mode.add_argument("--temp", action="store_true", help="run it in a temporary workspace (dvc exp run --temp)")
    mode.add_argument("--print", action="store_true", help="print the dvc command, run nothing")
    mode.add_argument("--save", action="store_true", help="copy its metrics and reports to results/<profile>/")
    parser.add_argument("--name", help="experiment name (default: the profile's)")
    parser.add_argument("-f", "--force", action="store_true", help="replace an experiment of the same name")
    parser.add_argument("-S", "--set-param", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="one more override after the profile's (repeatable), as in dvc exp run -S")
    parser.add_argument("targets", nargs="*", help="stages to run up to (default: all)")
    args = parser.parse_intermixed_args()  # targets may follow -S options
    name = args.name or args.profile
    if args.save:
        for path in profiles.save_results(name):
            print(path)
        return
    cmd = ["dvc", "exp", "run", "-n", name, *(["-f"] if args.force else []), *(["--queue"] if args.queue else ["--temp"] if args.temp else []),
           *profiles.set_args(profiles.load(args.profile, extra=args.sets)), *args.targets]
    print(shlex.join(cmd), flush=True)
    if not args.print:
        sys.exit(subprocess.call(cmd))


if __name__ == "__main__":
    main()
