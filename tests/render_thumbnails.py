"""Render the template-browser thumbnails (workflows/<name>.jpg) from real runs.

Runs every shipped workflow in a real ComfyUI server (the test harness, so the same set-up
as tests/test_comfy_server.py: COMFYUI_DIR etc.) and writes, beside each workflow, a JPEG
of its saved images side by side (the 224² reference-canvas / detail-map previews left
out): what a creator gets from that graph with the embedded default. Re-run after the
shipped weights or a workflow change; tests/test_nodes_contract.py checks each exists.

    python tests/render_thumbnails.py [--height 256] [--only choi_basic.json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_harness as ch  # noqa: E402

from PIL import Image  # noqa: E402

PREVIEW_SIZE = (224, 224)  # ID canvas / detail map previews: not what the workflow is for


def strip(images: list[Image.Image], height: int) -> Image.Image:
    """The images scaled to ``height`` and laid side by side on white, 8 px apart."""
    scaled = [im.convert("RGB").resize((max(1, round(im.width * height / im.height)), height), Image.LANCZOS)
              for im in images]
    gap = 8
    sheet = Image.new("RGB", (sum(s.width for s in scaled) + gap * (len(scaled) - 1), height), "white")
    x = 0
    for s in scaled:
        sheet.paste(s, (x, 0))
        x += s.width + gap
    return sheet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=256, help="thumbnail height in pixels (default 256)")
    parser.add_argument("--only", action="append", default=[], help="workflow file name(s) to render")
    args = parser.parse_args(argv)
    reason = ch.comfyui_unavailable_reason()
    if reason:
        print(f"render_thumbnails: {reason}", file=sys.stderr)
        return 2
    server = ch.server_for_tests()
    try:
        for path in ch.workflow_files():
            if args.only and path.name not in args.only:
                continue
            wf, expect = ch.prepare_shipped_workflow(path, server)
            result = server.run_workflow(wf, timeout=expect.get("timeout_s", 600))
            images = ch.check_outputs(server, result, expect)
            shown = [im for node in sorted(images, key=int) for im in images[node] if im.size != PREVIEW_SIZE]
            out = path.with_suffix(".jpg")
            strip(shown, args.height).save(out, quality=88)
            print(f"{out.name}: {len(shown)} images from a real run ({result.elapsed_s:.0f} s)")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
