#!/usr/bin/python3
"""A local RTSP camera for tests: videotestsrc ! x264enc tune=zerolatency ! rtph264pay, live at
FPS frames per second, served on 127.0.0.1 at a free port the kernel picks. Prints the URL on the
first line of stdout once it is listening, and stops by itself after SECONDS.

    tests/rtsp_server.py [--fps 15] [--size 320x240] [--seconds 30]
"""
import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fps", type=int, default=15)
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--seconds", type=float, default=30)
    args = ap.parse_args()
    width, height = args.size.split("x")
    Gst.init(None)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service("0")  # any free port
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},"
        f"framerate={args.fps}/1 ! x264enc tune=zerolatency speed-preset=ultrafast "
        f"key-int-max={args.fps} ! rtph264pay name=pay0 pt=96 config-interval=1 )")
    factory.set_shared(True)  # one encoder for every client
    server.get_mount_points().add_factory("/camera", factory)
    if server.attach(None) == 0:
        sys.exit("rtsp_server.py: could not listen on 127.0.0.1")
    print(f"rtsp://127.0.0.1:{server.get_bound_port()}/camera", flush=True)

    loop = GLib.MainLoop()
    GLib.timeout_add(int(args.seconds * 1000), loop.quit)
    loop.run()


if __name__ == "__main__":
    main()
