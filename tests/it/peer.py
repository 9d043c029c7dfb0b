# A hostile (or merely busy) local peer, for the fairness tests. The tests
# run it as another uid with `python3 -c <this file> MODE SOCKET ARGS...`.
# It prints one JSON line per milestone on stdout and waits for the test on
# stdin where it must.
import json
import os
import resource
import select
import socket
import sys
import time

mode, path = sys.argv[1], sys.argv[2]
args = sys.argv[3:]


def say(**kw):
    print(json.dumps(kw), flush=True)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def open_many(n, deadline):
    """Open n connections (a full backlog answers EAGAIN: retry)."""
    socks = []
    while len(socks) < n and time.time() < deadline:
        s = socket.socket(socket.AF_UNIX)
        s.setblocking(False)
        try:
            s.connect(path)
            socks.append(s)
        except BlockingIOError:
            s.close()
            time.sleep(0.001)
    return socks


def readable_closed(socks):
    """How many of the connections the daemon closed (busy, evicted)."""
    closed = 0
    for s in socks:
        try:
            data = s.recv(65536)
            if data == b"" or b'"busy"' in data:
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    return closed


if mode == "hold":
    # Open N connections, send nothing, hold them until stdin closes.
    n = int(args[0])
    raise_nofile()
    socks = open_many(n, time.time() + 30)
    time.sleep(0.5)
    say(opened=len(socks), refused=readable_closed(socks))
    sys.stdin.read()

elif mode == "flood":
    # N connections each send BYTES of LINE repeated without reading (for
    # at most SECS seconds: what the daemon does not take meanwhile stays
    # unsent). On "read" from stdin, read every reply to what was sent, then
    # sit idle until stdin closes.
    n, size, line = int(args[0]), int(args[1]), args[2].encode() + b"\n"
    secs = float(args[3]) if len(args) > 3 else 5
    raise_nofile()
    socks = open_many(n, time.time() + 30)
    payload = line * (size // len(line))
    left = {s: memoryview(payload) for s in socks}
    end = time.time() + secs
    while left and time.time() < end:
        for s in list(left):
            try:
                sent = s.send(left[s])
                left[s] = left[s][sent:]
                if not left[s]:
                    del left[s]
            except BlockingIOError:
                pass
            except OSError:
                del left[s]
        time.sleep(0.01)
    say(opened=len(socks), unsent=sum(len(v) for v in left.values()))
    if sys.stdin.readline().strip() != "read":
        sys.exit(0)
    want = {s: (len(payload) - len(left.get(s, b""))) // len(line) for s in socks}
    got = {s: 0 for s in socks}
    end = time.time() + 60
    live = list(socks)
    while live and time.time() < end:
        r, _, _ = select.select(live, [], [], 1.0)
        for s in r:
            try:
                data = s.recv(1 << 20)
            except OSError:
                data = b""
            if not data:
                live.remove(s)
                continue
            got[s] += data.count(b"\n")
            if got[s] >= want[s]:
                live.remove(s)
    say(replies=sum(got.values()), wanted=sum(want.values()))
    sys.stdin.read()

elif mode == "garbage":
    # For SECS seconds: pipelined garbage verifies and signs refused for a
    # 60 KB sub, reading the replies as they come.
    secs = float(args[0])
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    big = json.dumps({"op": "sign", "claims": {"sub": "x" * 60000}}).encode() + b"\n"
    bad = b'{"op":"verify","token":"x.y.z"}\n'
    batch = bad * 200 + big
    sent = replies = 0
    codes = {}
    end = time.time() + secs
    buf = b""
    while time.time() < end:
        s.sendall(batch)
        sent += 201
        while replies < sent - 400:
            buf += s.recv(1 << 20)
            *lines, buf = buf.split(b"\n")
            for l in lines:
                c = json.loads(l).get("error", {}).get("code", "ok")
                codes[c] = codes.get(c, 0) + 1
            replies += len(lines)
    say(sent=sent, replies=replies, codes=codes)

elif mode == "signs":
    # N sign requests, one after the other; the codes, in order.
    n = int(args[0])
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    f = s.makefile("rwb")
    out = []
    for i in range(n):
        f.write(json.dumps({"op": "sign", "claims": {"sub": "r%d" % i}}).encode() + b"\n")
        f.flush()
        r = json.loads(f.readline())
        out.append("ok" if r["ok"] else r["error"]["code"])
    say(codes=out)

elif mode == "sign_until":
    # Signs, 64 in flight, until one is refused: how many were issued, and
    # the first refusal.
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    f = s.makefile("rwb")
    line = json.dumps({"op": "sign", "claims": {"sub": "u%d" % os.getuid()}}).encode() + b"\n"
    issued, refused = 0, None
    while refused is None:
        f.write(line * 64)
        f.flush()
        for _ in range(64):
            r = json.loads(f.readline())
            if r["ok"]:
                issued += 1
            elif refused is None:
                refused = r["error"]
    say(issued=issued, refused=refused)

elif mode == "request":
    # One request (JSON on the command line); the reply.
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    f = s.makefile("rwb")
    f.write(args[0].encode() + b"\n")
    f.flush()
    say(reply=json.loads(f.readline()))

else:
    sys.exit("unknown mode " + mode)
