#!/usr/bin/env python3
"""Synthetic scenes for the demo Cobra model (docs/demo-model.md): GStreamer videotestsrc patterns
rendered through GStreamer itself, and coloured-shape scenes drawn with numpy, each with its
caption and question/answer pairs generated from the scene description.

numpy only (the shape renderer also runs on the training machine, which has no GStreamer).

  demo_data.py bank    -o build-demo/bank.npz     training frames of every pattern (GStreamer)
  demo_data.py heldout -o tests/data/demo         held-out images + questions for the tests
  demo_data.py preview -o preview.png             a contact sheet of both kinds of scene

Every image is a uint8 H x W x 3 RGB array at its rendered size; the model (engine or PyTorch)
squashes it to its own S x S with Pillow's bicubic, as Cobra does.
"""

import argparse
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np

# ---------------------------------------------------------------------------------------------
# videotestsrc patterns: caption ("Describe the image.") and name ("Which test pattern is this?")
# ---------------------------------------------------------------------------------------------

# Left out: blink (a black or white frame, whichever the frame count says), solid-color (white
# by default, the same image as "white"), zone-plate and chroma-zone-plate (flat grey with the
# default k* parameters). checkers-1/2/4/8 share one answer: after the squash to S px the
# square size depends on the input resolution, and 1-px squares blur to a flat olive.
PATTERNS = {
    "smpte": ("smpte color bars", "smpte"),
    "snow": ("random television snow", "snow"),
    "black": ("a plain black image", "black"),
    "white": ("a plain white image", "white"),
    "red": ("a plain red image", "red"),
    "green": ("a plain green image", "green"),
    "blue": ("a plain blue image", "blue"),
    "checkers-1": ("a red and green checkerboard", "checkers"),
    "checkers-2": ("a red and green checkerboard", "checkers"),
    "checkers-4": ("a red and green checkerboard", "checkers"),
    "checkers-8": ("a red and green checkerboard", "checkers"),
    "circular": ("concentric black and white rings", "circular"),
    "smpte75": ("smpte color bars at 75 percent", "smpte75"),
    "gamut": ("black, white, red and blue bands", "gamut"),
    "ball": ("a white ball on a black background", "ball"),
    "smpte100": ("smpte color bars at 100 percent", "smpte100"),
    "bar": ("a white vertical bar on a black background", "bar"),
    "pinwheel": ("a black and white pinwheel", "pinwheel"),
    "spokes": ("white spokes on a black background", "spokes"),
    "gradient": ("a gradient from black to white", "gradient"),
    "colors": ("a grid of all colors", "colors"),
    "smpte-rp-219": ("smpte rp 219 color bars", "smpte-rp-219"),
}

CAPTION_QUESTIONS = ["Describe the image.", "What is in this picture?"]
PATTERN_QUESTION = "Which test pattern is this?"

# Training sizes and held-out sizes (no overlap except 320x240, videotestsrc's default, where
# the held-out frames of the moving ball are frames training never saw).
TRAIN_SIZES = [(320, 240), (160, 120), (640, 480), (224, 224), (256, 144), (352, 288),
               (176, 144), (400, 300), (128, 96), (480, 270), (112, 112), (288, 216)]
HELDOUT_SIZES = [(320, 240), (300, 200), (200, 150), (512, 384), (240, 180), (384, 216),
                 (144, 144)]
BALL_FRAMES = 240           # frames of the ball's path rendered per size
BALL_TRAIN_STEP = 8         # training uses frames 0, 8, 16, ...; held-out ones are 4 mod 8


def gst_frames(pattern, width, height, frames=1, fmt="RGB"):
    """`frames` frames of videotestsrc pattern=`pattern` as [n, h, w, 3] uint8 RGB, rendered by
    gst-launch-1.0 in `fmt` (then converted to RGB by videoconvert when it is not RGB)."""
    cmd = ["gst-launch-1.0", "-q", "videotestsrc", f"pattern={pattern}", f"num-buffers={frames}",
           "!", f"video/x-raw,format={fmt},width={width},height={height},framerate=30/1"]
    if fmt != "RGB":
        cmd += ["!", "videoconvert", "!", f"video/x-raw,format=RGB,width={width},height={height}"]
    cmd += ["!", "fdsink", "fd=1"]
    raw = subprocess.run(cmd, check=True, capture_output=True).stdout
    stride = (width * 3 + 3) & ~3        # GStreamer pads RGB rows to 4 bytes
    a = np.frombuffer(raw, np.uint8)
    if a.size != frames * stride * height:
        raise RuntimeError(f"{pattern} {width}x{height} {fmt}: got {a.size} bytes")
    return a.reshape(frames, height, stride)[:, :, :width * 3].reshape(frames, height, width, 3).copy()


def pattern_qa(pattern):
    caption, name = PATTERNS[pattern]
    return [(q, caption) for q in CAPTION_QUESTIONS] + [(PATTERN_QUESTION, name)]


# ---------------------------------------------------------------------------------------------
# Coloured-shape scenes
# ---------------------------------------------------------------------------------------------

SHAPE_COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 230),
                "yellow": (240, 220, 30), "white": (245, 245, 245), "black": (10, 10, 10)}
BACKGROUNDS = {"black": (0, 0, 0), "white": (255, 255, 255), "gray": (128, 128, 128)}
SHAPES = ["circle", "square", "triangle"]
COUNT_WORDS = ["zero", "one", "two", "three", "four"]


def scene_params(rng):
    """A random scene description (everything the renderer and the questions need)."""
    bg = str(rng.choice(list(BACKGROUNDS)))
    color = str(rng.choice([c for c in SHAPE_COLORS if c != bg]))
    width = int(rng.integers(128, 385))
    height = int(np.clip(round(width / rng.uniform(0.75, 1.34)), 96, 384))
    return {"kind": "shapes", "shape": str(rng.choice(SHAPES)), "color": color,
            "count": int(rng.integers(1, 5)), "background": bg, "width": width, "height": height,
            "seed": int(rng.integers(0, 2**31 - 1))}


def _shape_mask(shape, cx, cy, r, xx, yy):
    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if shape == "square":
        h = 0.85 * r
        return (np.abs(xx - cx) <= h) & (np.abs(yy - cy) <= h)
    # upward isosceles triangle, apex at (cx, cy - r), base 2r wide at cy + r
    top = cy - r
    return (yy <= cy + r) & (yy >= top) & (np.abs(xx - cx) <= (yy - top) / 2.0 * 1.0)


def render_scene(p):
    """The uint8 RGB image of a scene description (deterministic in p['seed'])."""
    rng = np.random.default_rng(p["seed"])
    w, h = p["width"], p["height"]
    jitter = lambda c, j: np.clip(np.array(c) + rng.integers(-j, j + 1, 3), 0, 255)
    bg = jitter(BACKGROUNDS[p["background"]], 16)
    fg = jitter(SHAPE_COLORS[p["color"]], 24)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = bg.astype(np.uint8)
    side = min(w, h)
    base = rng.uniform(0.10, 0.15) * side
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    placed = []
    for attempt in range(2000):
        if len(placed) == p["count"]:
            break
        if attempt == 1999 or (attempt > 0 and attempt % 400 == 0):
            placed, base = [], base * 0.9          # start again a little smaller
        r = base * rng.uniform(0.85, 1.0)
        m = r + 0.04 * side
        cx, cy = rng.uniform(m, w - m), rng.uniform(m, h - m)
        if all(max(abs(cx - x), abs(cy - y)) > r + q + 0.06 * side for x, y, q in placed):
            placed.append((cx, cy, r))
    if len(placed) != p["count"]:
        raise RuntimeError(f"could not place {p['count']} shapes in {w}x{h}")
    for cx, cy, r in placed:
        img[_shape_mask(p["shape"], cx, cy, r, xx, yy)] = fg.astype(np.uint8)
    return img


def scene_caption(p):
    n = p["count"]
    what = f"{p['color']} {p['shape']}" + ("s" if n > 1 else "")
    return f"{'a' if n == 1 else COUNT_WORDS[n]} {what} on a {p['background']} background"


def scene_qa(p):
    """Every (question, answer) pair of a scene."""
    cap = scene_caption(p)
    return [(q, cap) for q in CAPTION_QUESTIONS] + [
        (f"How many {p['color']} {p['shape']}s are there?", COUNT_WORDS[p["count"]]),
        ("How many shapes are there?", COUNT_WORDS[p["count"]]),
        ("What color are the shapes?", p["color"]),
        ("Which shape is shown?", p["shape"]),
        ("What color is the background?", p["background"]),
    ]


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

def write_png(path, a):
    """A minimal RGB PNG writer (no Pillow here)."""
    h, w, _ = a.shape
    raw = b"".join(b"\0" + a[y].tobytes() for y in range(h))
    chunk = lambda t, d: (struct.pack(">I", len(d)) + t + d
                          + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def make_bank(out):
    """Training frames of every pattern: each training size, RGB and I420->RGB, the ball at 30
    positions, the other patterns (snow too) once per size and format. Saved as one compressed .npz + an index."""
    arrays, index = {}, []

    def add(img, pattern, size, fmt, frame):
        key = f"i{len(index)}"
        arrays[key] = img
        index.append({"key": key, "pattern": pattern, "width": size[0], "height": size[1],
                      "format": fmt, "frame": frame})

    for size in TRAIN_SIZES:
        for fmt in ("RGB", "I420"):
            for pattern in PATTERNS:
                if pattern == "ball":
                    frames = gst_frames(pattern, *size, BALL_FRAMES, fmt)
                    for f in range(0, BALL_FRAMES, BALL_TRAIN_STEP):
                        add(frames[f], pattern, size, fmt, f)
                else:
                    add(gst_frames(pattern, *size, 1, fmt)[0], pattern, size, fmt, 0)
        print(f"bank: {size[0]}x{size[1]} done, {len(index)} frames", file=sys.stderr)
    arrays["index"] = np.frombuffer(json.dumps(index).encode(), np.uint8)
    np.savez_compressed(out, **arrays)
    print(f"wrote {out}: {len(index)} frames, {os.path.getsize(out):,} bytes")


def load_npz_index(path):
    z = np.load(path)
    return z, json.loads(z["index"].tobytes().decode())


HELDOUT_SEED = 20261129
N_HELDOUT_SCENES = 60


def make_heldout(out_dir):
    """Held-out images (heldout.npz) and questions/answers (heldout.json) for the tests."""
    os.makedirs(out_dir, exist_ok=True)
    arrays, images, items = {}, [], []

    def add_image(img, desc, qa):
        key = f"i{len(images)}"
        arrays[key] = img
        images.append(dict(desc, key=key))
        for q, a in qa:
            items.append({"image": key, "question": q, "answer": a})

    for size in HELDOUT_SIZES:
        for pattern in PATTERNS:
            if pattern == "ball":
                frames = gst_frames(pattern, *size, BALL_FRAMES, "RGB")
                picks = [4 + 8 * k for k in (3, 17)] if size == (320, 240) else [0, 4 + 8 * 11]
                for f in picks:
                    add_image(frames[f], {"kind": "pattern", "pattern": pattern, "width": size[0],
                                          "height": size[1], "format": "RGB", "frame": f},
                              pattern_qa(pattern))
            else:
                add_image(gst_frames(pattern, *size, 1, "RGB")[0],
                          {"kind": "pattern", "pattern": pattern, "width": size[0],
                           "height": size[1], "format": "RGB", "frame": 0},
                          pattern_qa(pattern))
    rng = np.random.default_rng(HELDOUT_SEED)
    for _ in range(N_HELDOUT_SCENES):
        p = scene_params(rng)
        qa = scene_qa(p)
        # every scene: caption + the count question; the other questions in turn
        pick = [qa[0], qa[2]] + [qa[3 + (len(images) % 4)]]
        add_image(render_scene(p), p, pick)
    np.savez_compressed(os.path.join(out_dir, "heldout.npz"), **arrays)
    with open(os.path.join(out_dir, "heldout.json"), "w") as f:
        json.dump({"seed": HELDOUT_SEED, "sizes": HELDOUT_SIZES, "images": images,
                   "items": items}, f, indent=1)
    print(f"wrote {out_dir}: {len(images)} images, {len(items)} questions")


def make_preview(out):
    tiles = []
    for pattern in list(PATTERNS)[:12]:
        tiles.append(gst_frames(pattern, 160, 120)[0])
    rng = np.random.default_rng(1)
    for _ in range(12):
        p = scene_params(rng)
        p.update(width=160, height=120)
        tiles.append(render_scene(p))
    rows = [np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=128)
                            for t in tiles[r:r + 6]], 1) for r in range(0, len(tiles), 6)]
    write_png(out, np.concatenate(rows, 0))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["bank", "heldout", "preview"])
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args(argv)
    if args.what == "bank":
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        make_bank(args.output)
    elif args.what == "heldout":
        make_heldout(args.output)
    else:
        make_preview(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
