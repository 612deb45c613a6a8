#!/usr/bin/python3
"""pipelines/network-stream.sh against a real RTSP camera: a local GstRtspServer on 127.0.0.1
(tests/rtsp_server.py: H.264 at 15 fps). The captions must come about once per second (cobravlm's
default interval) and the video must reach the clock-synced sink at the camera's 15 fps: every
rendered frame is written as a tiny file by multifilesink, and the files' modification times are
when the sink rendered them. Everything is bounded: the server stops by itself, the script stops
the pipeline after RUN_S, and each process has a timeout. Skipped in a sanitizer build (the
argument is meson's b_sanitize).
"""
import json
import os
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
SCRIPT = HERE.parent / "pipelines" / "network-stream.sh"
FPS = 15
RUN_S = 8
INTERVAL_S = 1.0  # cobravlm's default interval


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def main():
    if len(sys.argv) > 1 and sys.argv[1] != "none":
        # gst-launch-1.0 cannot load a sanitizer build's plugin without its runtime preloaded,
        # and the rates measured here would be the sanitizers'; the plain build runs this test.
        print("SKIP: a sanitizer build (b_sanitize=%s)" % sys.argv[1])
        sys.exit(77)
    model = os.path.join(os.environ["COBRA_TEST_MODELS"], "demo-q8_0.gguf")
    server = subprocess.Popen([sys.executable, str(HERE / "rtsp_server.py"), "--fps", str(FPS),
                               "--seconds", str(RUN_S + 30)],
                              stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        if not url.startswith("rtsp://"):
            fail(f"the RTSP server did not start (said {url!r})")
        print("camera:", url)
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, COBRA_MODEL=model, COBRA_THREADS="1",
                       SINK=f"videoscale ! video/x-raw,width=2,height=2 "
                            f"! multifilesink sync=true location={tmp}/frame-%05d")
            run = subprocess.run(["bash", str(SCRIPT), url, str(RUN_S)], env=env, text=True,
                                 capture_output=True, timeout=RUN_S + 40)
            print(run.stderr[-3000:], end="")
            if run.returncode != 0:
                fail(f"network-stream.sh exited with {run.returncode}")
            frames = sorted(pathlib.Path(tmp).glob("frame-*"))
            times = [f.stat().st_mtime_ns / 1e9 for f in frames]
        captions = [json.loads(line) for line in run.stdout.splitlines()]
    finally:
        server.kill()
        server.wait()

    print(f"{len(captions)} captions, {len(frames)} frames rendered")
    if len(frames) < 2:
        fail("no video reached the sink")
    span = times[-1] - times[0]
    fps = (len(times) - 1) / span
    gaps = [b - a for a, b in zip(times, times[1:])]
    print(f"sink: {fps:.2f} fps over {span:.2f} s, longest gap between frames {max(gaps):.3f} s")
    # The whole run minus connecting and the 200 ms jitter buffer plays; a frame on time is
    # 1/15 s after the last one (a synced sink may render a late one sooner).
    if not FPS * 0.85 <= fps <= FPS * 1.15:
        fail(f"the sink rendered {fps:.2f} fps, the camera sends {FPS}")
    if span < RUN_S - 3:
        fail(f"video reached the sink for {span:.2f} s of a {RUN_S} s run")
    if max(gaps) > 0.5:
        fail(f"the video stalled for {max(gaps):.3f} s")

    pts = [c["source-pts"] / 1e9 for c in captions]
    steps = [b - a for a, b in zip(pts, pts[1:])]
    print("caption times (s):", " ".join(f"{t:.2f}" for t in pts))
    if len(captions) < RUN_S - 3:
        fail(f"{len(captions)} captions in a {RUN_S} s run, one per {INTERVAL_S} s expected")
    # due at each interval of running time: the first frame at or after it (frames 1/15 s apart)
    bad = [s for s in steps if not INTERVAL_S - 0.01 <= s <= INTERVAL_S + 2.0 / FPS]
    if bad:
        fail(f"captions {INTERVAL_S} s apart expected, got steps {steps}")
    if any(not c.get("text") for c in captions):
        fail("a caption without text")
    print("ok")


if __name__ == "__main__":
    main()
