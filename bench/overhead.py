"""Serving-layer overhead: rmserve against a bare endpoint, both serving a null-engine bundle, side by side.

The null-engine bundle is a copy of any bundle (same tokenizer, template, max_length) whose model costs
nothing: reward = sum(attention_mask) * 1e-3, hashes and golden set redone. What is left is the Python
layer around the engine (HTTP or gRPC, JSON, validation, tokenization, queue, metrics), the part that sets
the limit on a GPU, where a small reward model scores tens of thousands of texts per second.

Yardsticks (bench/bare_endpoint.py): for HTTP, one FastAPI route under uvicorn, one worker, pydantic body,
`encode_batch` with truncation at max_length, no batcher and no engine; in each round both its `def` and
its `async def` variant run and the faster one counts. For gRPC, a bare grpc.aio servicer doing the same
tokenization, in the handler or in a thread, the faster one counts. Load: compiled generators, `wrk` with a
Lua script cycling real HH request bodies for HTTP, `h2load` (nghttp2) for gRPC with one process per body
(bodies at evenly spaced quantiles of size), both Debian packages installed by
scripts/install-system-deps.sh; each bare endpoint's single-text figure with the generator on one thread
and on two is printed, to show the generator is not the limit. rmserve's gRPC statuses are read from its metrics afterwards
(h2load sees HTTP statuses only). Configurations alternate within each round, so that the
machine's drift spreads over all of them; the ratio of each round is reported and the median counts.

Also measured: single-text latency while 64-response requests run beside them (does tokenizing a big
request hold up small ones?), and one /score with a 100,000-character prompt and 256 short responses on
the real bundle against the same request with the prompt cut to its last 2,000 characters (time and RSS).

    python bench/overhead.py                               # 8 s per point, 3 rounds, default bundle
    python bench/overhead.py --server-cpus 0 --no-write    # servers on one core (taskset)
    python bench/overhead.py --sizes 1 --protocols http --rounds 1 --seconds 4 --no-write
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.loadgen import score_body  # noqa: E402
from bench.record import machine_name, record_run  # noqa: E402
from bench.serve import hh_rows, request_texts, rss_mb, start, stop  # noqa: E402
from tests.integration.server import free_port  # noqa: E402

LUA = """local bodies = {}
for line in io.lines(os.getenv("BODIES")) do bodies[#bodies + 1] = line end
local i = math.random(#bodies)
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", "/score", {["Content-Type"] = "application/json"}, bodies[i])
end
"""


def build_null_bundle(source: Path, target: Path) -> Path:
    """A copy of the bundle at `source` whose model is reward = sum(attention_mask) * 1e-3."""
    import onnx
    from onnx import TensorProto, helper

    from rmserve.service.core.bundle import GoldenExample, load_bundle, write_manifest

    bundle = load_bundle(source)
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    shutil.copy(bundle.tokenizer_path, target / "tokenizer.json")
    graph = helper.make_graph(
        [helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
         helper.make_node("ReduceSum", ["mask", "axes"], ["tokens"], keepdims=0),
         helper.make_node("Mul", ["tokens", "scale"], ["reward"])],
        "null_engine",
        [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
         for name in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("reward", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1]), helper.make_tensor("scale", TensorProto.FLOAT, [], [1e-3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # ONNX Runtime 1.31/1.32 refuses IR version 14
    onnx.checker.check_model(model)
    onnx.save(model, target / "model.onnx")
    encoder = bundle.encoder()
    golden = [GoldenExample(prompt=g.prompt, response=g.response,
                            score=len(encoder.encode([(g.prompt, g.response)])[0].ids) * 1e-3)
              for g in bundle.manifest.golden]
    write_manifest(target, bundle.manifest.model_copy(update={"bundle_id": "null-" + bundle.manifest.bundle_id,
                                                              "golden": golden}))
    load_bundle(target)
    return target


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    port: int  # HTTP port, or gRPC port for a gRPC-only server
    grpc_port: int | None = None


def pinned(cmd: list[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *cmd] if cpus else cmd


def start_servers(null_dir: Path, cpus: str | None, protocols: list[str], server_args: list[str],
                  bare_loops: list[str]) -> list[Server]:
    env = {"BARE_BUNDLE": str(null_dir)}
    servers = []
    port, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "rmserve.cli", "serve", "--bundle", str(null_dir), "--host", "127.0.0.1",
           "--port", str(port), "--grpc-port", str(grpc_port), "--log-level", "warning", *server_args]
    servers.append(Server("rmserve", start(pinned(cmd, cpus), {}, f"http://127.0.0.1:{port}"), port, grpc_port))
    for loop in bare_loops:
        suffix = "" if loop == "uvloop" else f" ({loop} loop)"
        if "http" in protocols:
            for variant, flag in (("bare HTTP def", "0"), ("bare HTTP async", "1")):
                port = free_port()
                cmd = [sys.executable, "-m", "uvicorn", "bench.bare_endpoint:app", "--host", "127.0.0.1", "--port",
                       str(port), "--loop", loop, "--log-level", "warning", "--no-access-log"]
                servers.append(Server(variant + suffix, start(pinned(cmd, cpus), {**env, "BARE_ASYNC": flag},
                                                              f"http://127.0.0.1:{port}"), port))
        if "grpc" in protocols:
            for variant, flag in (("bare gRPC thread", "0"), ("bare gRPC inline", "1")):
                port = free_port()
                cmd = [sys.executable, "bench/bare_endpoint.py", "--grpc-port", str(port)]
                proc = subprocess.Popen(pinned(cmd, cpus), cwd=ROOT, stdout=subprocess.DEVNULL,
                                        env={**os.environ, **env, "BARE_ASYNC": flag, "BARE_LOOP": loop})
                wait_grpc(port)
                servers.append(Server(variant + suffix, proc, port, port))
    return servers


def wait_grpc(port: int, timeout: float = 60.0) -> None:
    import grpc

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            grpc.channel_ready_future(grpc.insecure_channel(f"127.0.0.1:{port}")).result(timeout=1)
            return
        except grpc.FutureTimeoutError:
            pass
    raise TimeoutError(f"gRPC server on port {port} did not come up")


def wrk(port: int, bodies: Path, seconds: float, connections: int, latency: bool = False, threads: int = 1) -> dict:
    """Requests/s (and latency percentiles in ms with `latency`) from one wrk run; fails on any non-2xx."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "60s", "-s", str(bodies.with_suffix(".lua")),
           *(["--latency"] if latency else []), f"http://127.0.0.1:{port}/score"]
    out = subprocess.run(cmd, env={**os.environ, "BODIES": str(bodies)}, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors against port {port}:\n{out}")
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for q, value, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)$", out, re.M):
        result[f"p{q}"] = float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    return result


GRPC_SCORE = "/rmserve.v1.RewardModel/Score"


def h2load(port: int, bodies: list[Path], seconds: float, connections: int, threads: int = 1) -> dict:
    """gRPC calls/s from h2load (nghttp2's compiled HTTP/2 load generator), one process per body file sharing
    `connections` concurrent calls (one call at a time per connection), each process on `threads` threads.
    Fails on any HTTP-level error; gRPC statuses travel in trailers, which h2load does not read, so the
    callers check them (`grpc_failures`, and each body scored once before the load)."""
    share = [connections // len(bodies) + (k < connections % len(bodies)) for k in range(len(bodies))]
    procs = [subprocess.Popen(["h2load", f"-t{min(threads, n)}", f"-c{n}", "-m1", "-D", f"{seconds:g}", "--warm-up-time", "2",
                               "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
                               f"http://127.0.0.1:{port}{GRPC_SCORE}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
             for body, n in zip(bodies, share) if n]
    total = 0.0
    for proc in procs:
        out = proc.communicate(timeout=seconds + 120)[0]
        rate = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
        clean = re.search(r" 0 failed, 0 errored, 0 timeout", out) and re.search(r" 0 4xx, 0 5xx", out)
        if proc.returncode or rate is None or not clean:
            raise RuntimeError(f"h2load saw errors against port {port}:\n{out}")
        total += float(rate.group(1))
    return {"rps": total}


def grpc_failures(server: Server) -> int:
    """gRPC calls rmserve answered with an error status so far (a call h2load left unanswered when its time
    was up counts as client_gone, not as a failure)."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{server.port}/metrics").text
    return int(sum(float(v) for outcome, v in re.findall(
        r'^rmserve_requests_total\{[^}]*outcome="([a-z_]+)",protocol="grpc"\} ([\d.e+]+)$', text, re.M)
        if outcome not in ("ok", "client_gone")))


def check_bodies(servers: list[Server], bodies: dict) -> None:
    """Every gRPC body h2load will send is scored once by every gRPC server, with one reward per response."""
    import grpc

    from rmserve.proto import reward_pb2, reward_pb2_grpc

    for server in (s for s in servers if s.grpc_port):
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = reward_pb2_grpc.RewardModelStub(channel)
            for size, made in bodies.items():
                for frame in made.grpc:
                    reply = stub.Score(reward_pb2.ScoreRequest.FromString(frame.read_bytes()[5:]), timeout=60)
                    if len(reply.rewards) != size:
                        raise RuntimeError(f"{server.name} answered {len(reply.rewards)} rewards for {size} responses")


@dataclass
class Bodies:
    json: Path  # one JSON body per line, cycled by wrk's Lua script
    grpc: list[Path]  # gRPC-framed ScoreRequests, one per h2load process


def write_bodies(directory: Path, rows: list, sizes: list[int], count: int, grpc_bodies: int) -> dict[int, Bodies]:
    """`count` real HH request bodies per size for wrk, and `grpc_bodies` of them for h2load (which sends one
    body per process): those at evenly spaced quantiles of size, so that their mix of lengths is the mix of all."""
    import struct

    from rmserve.proto import reward_pb2 as pb

    made = {}
    for size in sizes:
        path = directory / f"bodies-{size}.txt"
        protos = []
        with open(path, "w") as f:
            for i in range(count):
                prompt, responses = request_texts(rows, i, size)
                f.write(score_body(prompt, responses).decode() + "\n")
                protos.append(pb.ScoreRequest(prompt=pb.Prompt(text=prompt), responses=responses).SerializeToString())
        path.with_suffix(".lua").write_text(LUA)
        by_size = sorted(protos, key=len)
        frames = []
        for k in range(grpc_bodies):
            message = by_size[(2 * k + 1) * len(by_size) // (2 * grpc_bodies)]
            frame = directory / f"grpc-{size}-{k}.bin"
            frame.write_bytes(b"\0" + struct.pack(">I", len(message)) + message)  # uncompressed, 4-byte length
            frames.append(frame)
        made[size] = Bodies(path, frames)
    return made


def concurrency(connections: int, size: int) -> int:
    """Concurrent requests at `size` responses each: `connections`, or fewer when that many rows would not
    fit rmserve's default queue (the rest would be refused with 429, correctly, and the bare endpoint has
    no queue to refuse them)."""
    from rmserve.service.settings import Settings

    return max(1, min(connections, Settings.model_fields["max_queue_rows"].default // size))


def measure_round(servers: list[Server], bodies: dict[int, Bodies], sizes: list[int], protocols: list[str],
                  seconds: float, connections: int, order: int) -> dict:
    """One round: every server at every size and protocol, in alternating order; {(protocol, size, name): rps}."""
    figures = {}
    for size in sizes:
        clients = concurrency(connections, size)
        for protocol in protocols:
            prefix = {"http": "bare HTTP", "grpc": "bare gRPC"}[protocol]
            group = [s for s in servers if s.name == "rmserve" or s.name.startswith(prefix)]
            for server in (group if order % 2 == 0 else group[::-1]):
                if protocol == "http":
                    rps = wrk(server.port, bodies[size].json, seconds, clients)["rps"]
                else:
                    rps = h2load(server.grpc_port, bodies[size].grpc, seconds, clients)["rps"]
                figures[(protocol, size, server.name)] = rps
                print(f"  {protocol} x{size} {server.name}: {rps:.0f} req/s = {rps * size:.0f} texts/s", flush=True)
    return figures


def latency_beside_big(servers: list[Server], bodies: dict, seconds: float) -> list[str]:
    """Single-text latency at c=16 alone, and with two clients sending 64-response requests beside them."""
    lines = []
    single, big = bodies[1].json, bodies[64].json
    for server in (s for s in servers if s.name in ("rmserve", "bare HTTP def", "bare HTTP async")):
        alone = wrk(server.port, single, seconds, 16, latency=True)
        beside = subprocess.Popen(["wrk", "-t1", "-c2", f"-d{seconds + 2:g}s", "--timeout", "60s", "-s", str(big.with_suffix(".lua")),
                                   f"http://127.0.0.1:{server.port}/score"], env={**os.environ, "BODIES": str(big)},
                                  stdout=subprocess.PIPE, text=True)
        time.sleep(1)  # not synchronization: the big requests' load is under way before the measured window
        mixed = wrk(server.port, single, seconds, 16, latency=True)
        big_rps = float(re.search(r"Requests/sec:\s+([\d.]+)", beside.communicate()[0]).group(1))
        lines.append(f"| {server.name} | {alone['rps']:.0f} | {alone['p50']:.1f} / {alone['p99']:.1f} | "
                     f"{mixed['rps']:.0f} | {mixed['p50']:.1f} / {mixed['p99']:.1f} | {big_rps:.1f} |")
        print(lines[-1], flush=True)
    return lines


def long_prompt(bundle_dir: Path, rows: list, repeats: int = 3) -> str:
    """One /score with a 100,000-character prompt and 256 short responses against the same request with the
    prompt cut to its last 2,000 characters (both fill max_length), on the real bundle; time and RSS."""
    import httpx

    from bench.serve import start_rmserve

    prompt = "".join(p for p, _ in rows)[:100_000]
    responses = [r[:120] for _, r in rows[:256]]
    server = start_rmserve(bundle_dir, ["--grpc-port", "-1"])
    try:
        client = httpx.Client(base_url=server.url, timeout=600)
        client.post("/score", json={"prompt": prompt[-2000:], "responses": responses}).raise_for_status()  # warm-up
        rss0 = rss_mb(server.proc.pid)
        times: dict[str, list[float]] = {"100,000 characters": [], "last 2,000 characters": []}
        for _ in range(repeats):
            for label, text in (("100,000 characters", prompt), ("last 2,000 characters", prompt[-2000:])):
                began = time.perf_counter()
                client.post("/score", json={"prompt": text, "responses": responses}).raise_for_status()
                times[label].append(time.perf_counter() - began)
        rss1 = rss_mb(server.proc.pid)
    finally:
        stop(server.proc)
    long_s, short_s = (statistics.median(v) for v in times.values())
    return (f"one /score, 256 responses of ≤120 characters: prompt of 100,000 characters {long_s:.2f} s, cut to its "
            f"last 2,000 {short_s:.2f} s (medians of {repeats}, alternating): **{long_s / short_s:.2f} ×**; server RSS "
            f"{rss0:.0f} → {rss1:.0f} MB (**{rss1 - rss0:+.0f} MB** over {2 * repeats} requests)")


def gpu_policy() -> str:
    """rmserve's CUDA batching defaults as `serve` flags: the batching the null engine stands in for."""
    from rmserve.service.core.engine import CUDA
    from rmserve.service.core.scoring import provider_batching

    cuda = provider_batching(CUDA)
    return f"--max-padding-ratio {cuda.max_padding_ratio} --max-batch-tokens {cuda.max_batch_tokens}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="artifacts/default-bundle", help="Bundle whose tokenizer and template are used.")
    parser.add_argument("--seconds", type=float, default=8.0, help="Measured seconds per server, size and round.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 64], help="Responses per request.")
    parser.add_argument("--protocols", nargs="+", choices=["http", "grpc"], default=["http", "grpc"])
    parser.add_argument("--connections", type=int, default=32,
                        help="Concurrent requests (fewer for big requests: as many as rmserve's default queue holds).")
    parser.add_argument("--grpc-bodies", type=int, default=8,
                        help="Distinct gRPC request bodies per size: h2load sends one per process, so as many processes.")
    parser.add_argument("--server-cpus", default=None, help="taskset CPU list for every server, e.g. 0 or 0-1.")
    parser.add_argument("--server-args", default=gpu_policy(),
                        help="`rmserve serve` flags. Default: rmserve's CUDA batching (padding cap and token budget), "
                             "since the null engine stands in for a GPU, where a padded token costs next to nothing "
                             "(on CPU both are lower because there a token costs real compute, which the null "
                             "engine does not have); "
                             "'' for the CPU defaults.")
    parser.add_argument("--bare-loops", nargs="+", choices=["uvloop", "asyncio"], default=["uvloop"],
                        help="Event loops the bare endpoints run on; each adds its variants, the fastest counts.")
    parser.add_argument("--skip-extras", action="store_true", help="Skip the latency-beside-big and long-prompt runs.")
    parser.add_argument("--note", default="", help="A remark for the record, e.g. that the machine was shared.")
    parser.add_argument("--no-write", action="store_true", help="Do not append to docs/benchmarks.md.")
    args = parser.parse_args()
    for tool, protocol, package in (("wrk", "http", "wrk"), ("h2load", "grpc", "nghttp2-client")):
        if shutil.which(tool) is None and protocol in args.protocols:
            sys.exit(f"bench/overhead.py needs {tool} for {protocol}: run scripts/install-system-deps.sh "
                     f"(Debian package {package})")

    work = Path(tempfile.mkdtemp(prefix="rmserve-overhead-"))
    bundle_dir = ROOT / args.bundle
    null_dir = build_null_bundle(bundle_dir, work / "null-bundle")
    rows = hh_rows(3000)
    # Single texts always: the generator check uses them, as do the extras (with 64-response requests).
    sizes = sorted(set(args.sizes) | {1} | ({64} if not args.skip_extras and "http" in args.protocols else set()))
    bodies = write_bodies(work, rows, sizes, 200, args.grpc_bodies)
    print(f"null-engine bundle {null_dir} (from {bundle_dir}); servers on CPUs {args.server_cpus or 'all'}", flush=True)
    servers = start_servers(null_dir, args.server_cpus, args.protocols, shlex.split(args.server_args), args.bare_loops)
    rounds = []
    generator_check = ""
    try:
        # The generators are not the limit: with twice their threads, the bare endpoints answer as many.
        checks = []
        if "http" in args.protocols:
            for bare in (s for s in servers if s.name.startswith("bare HTTP")):
                base, more = (wrk(bare.port, bodies[1].json, args.seconds, args.connections, threads=t)["rps"] for t in (1, 2))
                checks.append(f"{bare.name} {base:.0f} → {more:.0f} req/s")
        if "grpc" in args.protocols:
            check_bodies(servers, {size: bodies[size] for size in args.sizes})
            for bare in (s for s in servers if s.name.startswith("bare gRPC")):
                base, more = (h2load(bare.grpc_port, bodies[1].grpc, args.seconds, args.connections, threads=t)["rps"]
                              for t in (1, 2))
                checks.append(f"{bare.name} {base:.0f} → {more:.0f} calls/s")
        if checks:
            generator_check = (f"generator check, single texts, wrk and each of {args.grpc_bodies} h2load processes on one "
                               f"thread → two: {'; '.join(checks)}")
            print(generator_check, flush=True)
        for r in range(args.rounds):
            print(f"round {r + 1}", flush=True)
            rounds.append(measure_round(servers, bodies, args.sizes, args.protocols, args.seconds, args.connections, r))
        failed = sum(grpc_failures(s) for s in servers if s.name == "rmserve") if "grpc" in args.protocols else 0
        if failed:
            raise RuntimeError(f"rmserve answered {failed} gRPC calls with an error status under load")
        latency = [] if args.skip_extras or "http" not in args.protocols else latency_beside_big(servers, bodies, args.seconds)
    finally:
        for server in servers:
            stop(server.proc)
    long_line = "" if args.skip_extras else long_prompt(bundle_dir, rows)
    print(long_line)

    table = ["| protocol | responses / request | concurrent requests | rmserve req/s (texts/s) | best bare req/s (variant) "
             "| rmserve ÷ bare, each round | median |", "|---|---|---|---|---|---|---|"]
    for protocol in args.protocols:
        for size in args.sizes:
            ratios, ours, best = [], [], []
            for figures in rounds:
                bare = {name: v for (p, s, name), v in figures.items() if p == protocol and s == size and name != "rmserve"}
                name = max(bare, key=bare.get)
                ours.append(figures[(protocol, size, "rmserve")])
                best.append((bare[name], name))
                ratios.append(ours[-1] / bare[name])
            mid = statistics.median(ours)
            table.append(f"| {protocol} | {size} | {concurrency(args.connections, size)} | {mid:.0f} ({mid * size:.0f}) | {statistics.median(b for b, _ in best):.0f} "
                         f"({', '.join(sorted({n for _, n in best}))}) | {', '.join(f'{x:.2f}' for x in ratios)} | "
                         f"**{statistics.median(ratios):.2f}** |")
    text = "\n".join(table)
    notes = [f"- servers on CPUs {args.server_cpus or 'all'} of {machine_name()}; {args.connections} concurrent requests; "
             f"{args.rounds} rounds of {args.seconds:g} s per server and size, alternating; rmserve flags: "
             f"{args.server_args or 'defaults'}; bare endpoints on {' and '.join(args.bare_loops)}"]
    if generator_check:
        notes.append(f"- {generator_check}")
    if latency:
        notes += ["- single texts (wrk c=16) alone and beside two clients sending 64-response requests:", "",
                  "| server | alone req/s | alone p50 / p99 ms | beside 64s req/s | beside p50 / p99 ms | 64-response req/s |",
                  "|---|---|---|---|---|---|", *latency, ""]
    if long_line:
        notes.append(f"- long shared prompt (bundle {args.bundle}): {long_line}")
    print(text)
    print("\n".join(notes))
    if not args.no_write:
        record_run("Serving-layer overhead (null engine)", f"null-engine copy of `{args.bundle}`, wrk for HTTP, "
                   f"h2load for gRPC ({args.grpc_bodies} bodies per size)" + (f"; {args.note}" if args.note else ""),
                   text + "\n\n" + "\n".join(notes), device="cuda" if "--device cuda" in args.server_args else "cpu")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
