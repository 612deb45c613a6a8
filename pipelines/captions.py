#!/usr/bin/python3
"""Turns `gst-launch-1.0 -m` output into captions: one JSON object per line (the default), or
an .srt subtitle file (--srt). Only the "cobravlm" element messages are read, with every field
(the element's own "element" field names the cobravlm that answered).

    gst-launch-1.0 -m ... cobravlm ... | pipelines/captions.py
    gst-launch-1.0 -m ... cobravlm ... | pipelines/captions.py --srt --hold 2 > out.srt

For JSON with no Python at all, set text-format=json on cobravlm and write its text_src to a
file (pipelines/captions-json.sh).

The .srt holds one element's captions (the first to answer, or --element NAME): answers to the
prompt only (not to `ask`), timed from the first frame's PTS, each shown until the next caption
(or --hold seconds for the last); answers about the same frame keep the last.
"""
import argparse
import json
import re
import sys

MESSAGE = re.compile(r'Got message #\d+ from element "([^"]+)" \(element\): cobravlm, (.*);\s*$')
FIELD = re.compile(r'\s*([\w-]+)=\((\w+)\)')


def unescape(s):
    """GStreamer's serialised strings: \\ooo is an octal byte, \\x is x."""
    out = bytearray()
    i = 0
    while i < len(s):
        if s[i] == '\\' and re.match(r'[0-7]{3}', s[i + 1:i + 4]):
            out.append(int(s[i + 1:i + 4], 8))
            i += 4
        elif s[i] == '\\' and i + 1 < len(s):
            out += s[i + 1].encode()
            i += 2
        else:
            out += s[i].encode()
            i += 1
    return out.decode('utf-8', errors='replace')


def parse_fields(body):
    fields = {}
    pos = 0
    while pos < len(body):
        m = FIELD.match(body, pos)
        if not m:
            break
        name, kind = m.group(1), m.group(2)
        pos = m.end()
        if body.startswith('"', pos):  # quoted: up to the next unescaped quote
            end = pos + 1
            while body[end] != '"':
                end += 2 if body[end] == '\\' else 1
            raw, pos = body[pos + 1:end], end + 1
        else:
            end = body.find(',', pos)
            end = len(body) if end < 0 else end
            raw, pos = body[pos:end], end
        pos = body.find(',', pos) + 1 or len(body)
        if kind == 'string':
            fields[name] = unescape(raw)
        elif kind == 'boolean':
            fields[name] = raw.lower() in ('true', '1', 'yes')
        else:
            fields[name] = int(raw)
    return fields


def srt_time(ns):
    ms = ns // 1000000
    return '%02d:%02d:%02d,%03d' % (ms // 3600000, ms // 60000 % 60, ms // 1000 % 60, ms % 1000)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--srt', action='store_true', help='write SubRip subtitles')
    ap.add_argument('--hold', type=float, default=1.0,
                    help='seconds the last caption stays up (.srt; default 1)')
    ap.add_argument('--element', help='the cobravlm whose captions go in the .srt '
                    '(default: the first that answers)')
    args = ap.parse_args()

    captions = []
    for line in sys.stdin:
        m = MESSAGE.match(line)
        if not m:
            continue
        caption = dict(element=m.group(1))
        caption.update(parse_fields(m.group(2)))
        if args.srt:
            captions.append(caption)
        else:
            print(json.dumps(caption, ensure_ascii=False), flush=True)

    if args.srt:
        write_srt(captions, args.element, int(args.hold * 1e9))


def write_srt(captions, element, hold_ns):
    if element is None and captions:
        element = captions[0]['element']
    by_pts = {}
    for c in captions:
        if c['element'] == element and 'request-id' not in c:
            by_pts[c['source-pts']] = c    # several answers about one frame: the last
    cues = [by_pts[pts] for pts in sorted(by_pts)]
    origin = cues[0]['source-pts'] if cues else 0
    for i, c in enumerate(cues):
        start = c['source-pts'] - origin
        end = cues[i + 1]['source-pts'] - origin if i + 1 < len(cues) else start + hold_ns
        print('%d\n%s --> %s\n%s\n' % (i + 1, srt_time(start), srt_time(end), c['text']))


if __name__ == '__main__':
    main()
