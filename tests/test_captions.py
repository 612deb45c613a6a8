#!/usr/bin/python3
"""pipelines/captions.py on crafted `gst-launch-1.0 -m` output: JSON lines keep every field; the
.srt holds one element's prompt answers, timed from the first frame, without zero-length cues
for answers about the same frame, and not the answers to `ask`."""
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, '..', 'pipelines', 'captions.py')


def message(n, element, text, pts, request_id=None):
    escaped = text.replace(' ', '\\ ')
    fields = [f'element=(string){element}', f'text=(string)"{escaped}"',
              'prompt=(string)"Describe\\ the\\ image."']
    if request_id:
        fields.append(f'request-id=(uint){request_id}')
    fields += [f'source-pts=(guint64){pts}', 'n-tokens=(uint)5']
    return f'Got message #{n} from element "{element}" (element): cobravlm, {", ".join(fields)};\n'


def run(args, lines):
    out = subprocess.run([sys.executable, SCRIPT] + args, input=''.join(lines), text=True,
                         capture_output=True, check=True)
    return out.stdout


def main():
    s = 10**9
    lines = [
        'Setting pipeline to PLAYING ...\n',
        message(1, 'cam1', 'a white ball', 5 * s),              # the stream starts at 5 s
        message(2, 'cam2', 'other camera', 5 * s),
        message(3, 'cam1', 'an answer to ask', 5 * s, request_id=1),
        message(4, 'cam1', 'a red square', 7 * s),
        message(5, 'cam1', 'a red square, again', 7 * s),       # same frame: the last is kept
        message(6, 'cam1', 'snow', 9 * s),
    ]
    objs = [json.loads(line) for line in run([], lines).splitlines()]
    assert len(objs) == 6, objs
    assert objs[0]['element'] == 'cam1' and objs[0]['text'] == 'a white ball', objs[0]
    assert objs[0]['source-pts'] == 5 * s and objs[0]['n-tokens'] == 5, objs[0]
    assert objs[2]['request-id'] == 1, objs[2]

    srt = run(['--srt', '--hold', '2'], lines)
    cues = re.findall(r'(\d+)\n(\S+) --> (\S+)\n(.*)\n', srt)
    assert cues == [
        ('1', '00:00:00,000', '00:00:02,000', 'a white ball'),
        ('2', '00:00:02,000', '00:00:04,000', 'a red square, again'),
        ('3', '00:00:04,000', '00:00:06,000', 'snow'),
    ], cues
    other = re.findall(r'(\d+)\n(\S+) --> (\S+)\n(.*)\n', run(['--srt', '--element', 'cam2'], lines))
    assert other == [('1', '00:00:00,000', '00:00:01,000', 'other camera')], other
    print('1 passed, 0 failed')


if __name__ == '__main__':
    main()
