"""Build an HTML template for `dvc plots show` that renders offline.

    python scripts/build_plots_template.py build/vega_offline.html
    dvc plots show --html-template build/vega_offline.html

DVC's default page loads vega, vega-lite and vega-embed from a CDN and stays blank
offline. vl-convert-python carries all three as one JavaScript bundle; inlining it
gives a page with no external requests.
"""

import argparse
from pathlib import Path

import vl_convert

from spark_trainer.outputs import write_text_atomic

PAGE = """<!DOCTYPE html>
<html>
<head>
  <meta charset="utf-8">
  {refresh_tag}
  <title>SparkTrainer plots</title>
  <script>
BUNDLE
  </script>
  <style>table {{ border-spacing: 15px; }}</style>
</head>
<body>
  {plot_divs}
</body>
</html>
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    # The default snippet puts vegaEmbed, vegaLite and vega on `window`, which DVC's divs call.
    bundle = vl_convert.javascript_bundle().replace("</script", "<\\/script")
    # DVC fills {plot_divs} and {refresh_tag} by plain replacement; leaving out {scripts}
    # drops the CDN <script> tags it would add.
    page = PAGE.replace("{{", "{").replace("}}", "}").replace("BUNDLE", bundle)
    write_text_atomic(args.out, page)
    print(f"wrote {args.out} ({len(page) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
