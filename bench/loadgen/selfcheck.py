"""Checks lockload (built with ASan + UBSan) against a scripted fake server on loopback:
`.venv/bin/python bench/loadgen/selfcheck.py` (a few seconds; not part of the test suite).

The fake speaks both protocols with real lock semantics (FIFO waiters for coordcore,
SET NX for Redis) and can send each reply byte by byte, answer SET with any of the
three nulls, and misbehave on purpose. A correct server must give exit 0 and cycle
counts that agree with the fake's own; every fault must give exit 1 and say why.
"""
from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import hiredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import _loadgen  # noqa: E402


class Fake:
    def __init__(self, *, split: bool = False, null: bytes = b"$-1\r\n", fault: str = "", after: int = 50) -> None:
        self.split, self.null, self.fault, self.after = split, null, fault, after
        self.holder: dict[bytes, Any] = {}  # coordcore: (reply queue, token); redis: token
        self.waiters: dict[bytes, deque[Any]] = defaultdict(deque)
        self.token = 0
        self.grants = 0
        self.releases = 0
        self.commands = 0
        self.nulls = 0
        self.problems: list[str] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        parser = hiredis.Reader()
        out: asyncio.Queue[bytes] = asyncio.Queue()
        sender = asyncio.ensure_future(self.send(out, writer))
        try:
            while data := await reader.read(65536):
                parser.feed(data)
                while (req := parser.gets()) is not False:
                    self.commands += 1
                    if self.fault == "drop" and self.commands > self.after:
                        writer.transport.abort()
                        return
                    if self.fault == "stall" and self.commands > self.after:
                        continue
                    self.handle(req, out)
        except ConnectionError:  # the generator exits at once after a fault it detected
            pass
        finally:
            sender.cancel()

    async def send(self, out: asyncio.Queue[bytes], writer: asyncio.StreamWriter) -> None:
        while True:
            reply = await out.get()
            if self.split:
                for i in range(len(reply)):
                    writer.write(reply[i:i + 1])
                    await writer.drain()
                    await asyncio.sleep(0)
            else:
                writer.write(reply)
            if writer.is_closing():
                return

    def grant(self, key: bytes, out: asyncio.Queue[bytes]) -> None:
        self.grants += 1
        self.token += 1
        token = self.token
        if self.fault == "old-token" and self.grants > self.after:
            token -= 2
        self.holder[key] = (out, b"%d" % token)
        out.put_nowait(b":%d\r\n" % token)

    def handle(self, req: list[bytes], out: asyncio.Queue[bytes]) -> None:
        cmd = req[0].upper()
        if self.fault == "error" and self.commands > self.after:
            out.put_nowait(b"-BUSY injected failure\r\n")
        elif cmd == b"SESSION.OPEN":
            handle = b"%d.%s" % (1000 + self.commands, b"ab" * 16)
            out.put_nowait(b"$%d\r\n%b\r\n" % (len(handle), handle))
        elif cmd == b"SESSION.CLOSE":
            out.put_nowait(b"+OK\r\n")
        elif cmd == b"LOCK.ACQUIRE":
            key = req[1]
            if key not in self.holder or (self.fault == "double-grant" and self.grants > self.after):
                self.grant(key, out)
            else:
                self.waiters[key].append(out)
        elif cmd == b"LOCK.RELEASE":
            key = req[1]
            held = self.holder.get(key)
            if held is None or held[0] is not out or req[3:] != [b"TOKEN", held[1]]:
                if not self.fault:
                    self.problems.append(f"{req!r} does not release a hold of this client")
                out.put_nowait(b"-NOTHOLDER\r\n")
                return
            self.releases += 1
            out.put_nowait(b"+NOPE\r\n" if self.fault == "bad-reply" and self.releases > self.after else b"+OK\r\n")
            del self.holder[key]
            if self.waiters[key]:
                self.grant(key, self.waiters[key].popleft())
        elif cmd == b"SCRIPT":
            out.put_nowait(b"$40\r\n" + b"a" * 40 + b"\r\n")
        elif cmd == b"SET":
            key, token = req[1], req[2]
            if key in self.holder:
                self.nulls += 1
                out.put_nowait(self.null)
            else:
                self.holder[key] = token
                self.grants += 1
                out.put_nowait(b"+OK\r\n")
        elif cmd == b"EVALSHA":
            key, token = req[3], req[4]
            ok = self.holder.get(key) == token
            if ok:
                del self.holder[key]
            self.releases += 1
            out.put_nowait(b":%d\r\n" % (ok and not (self.fault == "lost" and self.releases > self.after)))
        else:
            out.put_nowait(b"-ERR unknown command\r\n")


async def scenario(name: str, protocol: str, fake: Fake, *, expect_ok: bool, says: tuple[str, ...] = (),
                   clients: int = 8, keys: int = 3) -> bool:
    server = await asyncio.start_server(fake.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    argv = [str(_loadgen.build(sanitize=True)), "--port", str(port), "--protocol", protocol, "--clients",
            str(clients), "--keys", str(keys), "--seconds", "0.6", "--warmup", "0.2", "--drain", "2"]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    server.close()
    err = stderr.decode().strip()
    problems: list[str] = []
    problems += fake.problems
    if expect_ok:
        doc = json.loads(stdout or b'{"cycles": 0, "all_cycles": 0}')
        if proc.returncode != 0 or err:
            problems.append(f"exit {proc.returncode}: {err}")
        if doc["all_cycles"] != fake.grants or not 0 < doc["cycles"] <= doc["all_cycles"]:
            problems.append(f"cycles {doc['cycles']}/{doc['all_cycles']} vs {fake.grants} grants")
        q = doc.get("quantiles_ms", [])
        if len(q) != 999 or q != sorted(q) or not q[0] <= doc["p50_ms"] <= q[-1] or q[989] != doc["p99_ms"]:
            problems.append(f"latency quantiles do not fit p50 {doc.get('p50_ms')} / p99 {doc.get('p99_ms')}: "
                            f"{len(q)} values, {q[:3]}...")
        if fake.releases != fake.grants:
            problems.append(f"{fake.releases} releases for {fake.grants} grants")
        if protocol == "redis-lock" and fake.nulls == 0:
            problems.append("no SET was refused: the retry path went untested")
        detail = f"{doc['all_cycles']} cycles, {fake.nulls} refused SETs"
    else:
        if proc.returncode != 1 or not any(s in err for s in says) or "Sanitizer" in err:
            problems.append(f"exit {proc.returncode}, stderr {err!r}, wanted {says!r}")
        detail = err.splitlines()[0] if err else ""
    print(f"  {'FAIL' if problems else 'ok  '} {name}: {'; '.join(problems) or detail}", flush=True)
    return not problems


async def main() -> int:
    results = [
        await scenario("coordcore, whole replies", "coordcore", Fake(), expect_ok=True),
        await scenario("coordcore, replies byte by byte", "coordcore", Fake(split=True), expect_ok=True),
        await scenario("redis-lock, $-1 null, byte by byte", "redis-lock", Fake(split=True), expect_ok=True),
        await scenario("redis-lock, RESP3 _ null", "redis-lock", Fake(null=b"_\r\n"), expect_ok=True),
        await scenario("redis-lock, *-1 null", "redis-lock", Fake(null=b"*-1\r\n"), expect_ok=True),
        await scenario("error reply", "coordcore", Fake(fault="error"), expect_ok=False,
                       says=("server error -BUSY injected failure",)),
        await scenario("unexpected reply", "coordcore", Fake(fault="bad-reply"), expect_ok=False,
                       says=("LOCK.RELEASE: unexpected reply +NOPE",)),
        await scenario("token not rising", "coordcore", Fake(fault="old-token"), expect_ok=False,
                       says=("is not above the last one",)),
        await scenario("double grant", "coordcore", Fake(fault="double-grant"), expect_ok=False,
                       says=("while client", "is not above the last one")),
        await scenario("lock lost before release", "redis-lock", Fake(fault="lost"), expect_ok=False,
                       says=("was no longer held",)),
        await scenario("dropped connection", "coordcore", Fake(fault="drop"), expect_ok=False,
                       says=("connection lost",)),
        await scenario("stalled server", "redis-lock", Fake(fault="stall"), expect_ok=False,
                       says=("still busy",)),
    ]
    print(f"  {sum(results)}/{len(results)} scenarios as expected")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
