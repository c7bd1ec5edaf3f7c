"""Make reference API prompts with ComfyUI's real frontend, for UI-format workflows we write ourselves.

comfynb's UI -> API conversion must match the frontend's ``graphToPrompt`` exactly, and reading the
frontend's code is not proof. This script serves the built frontend of the PyPI package
``comfyui-frontend-package`` (static files) with a tiny aiohttp app that answers the few API calls
the frontend makes at startup (``/object_info`` from a file, ``/system_stats``, empty settings,
user data and extension lists, a websocket that says the queue is empty), opens it in headless
Chromium (Debian's, driven by Playwright), and for each workflow calls
``app.loadGraphData(json, true, true, name, {openSource: 'template'})`` and ``app.graphToPrompt()``
(three times: they must agree), as the shared reference pairs were made.

Run (needs the ``frontend-ref`` extra and /usr/bin/chromium):

    .venv/bin/python tools/frontend_reference.py OUT_DIR WORKFLOW.json ... [--object-info FILE]

For each ``name.json`` it writes ``OUT_DIR/name.api.json`` (the prompt, keys as the frontend
emits them, 2-space indent) and prints the frontend version, any console warnings or errors, and any
API call it answered with 404 (so a missing endpoint shows). Not a test dependency: its output is
committed under ``tests/fixtures/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
from pathlib import Path

from aiohttp import WSMsgType, web

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
DEFAULT_OBJECT_INFO = ROOT / "tests" / "fixtures" / "object_info_0.8.0.json"


def static_dir() -> Path:
    import comfyui_frontend_package

    return Path(comfyui_frontend_package.__file__).parent / "static"


def frontend_version() -> str:
    from importlib.metadata import version

    return version("comfyui-frontend-package")


def make_app(object_info: dict, missing: list[str]) -> web.Application:
    """The static frontend plus stubs of the server endpoints it calls at startup."""
    static = static_dir()
    settings: dict = {"Comfy.TutorialCompleted": True}

    async def index(_request: web.Request) -> web.StreamResponse:
        return web.FileResponse(static / "index.html")

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        status = {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "reference"}
        await sock.send_json({"type": "status", "data": status})
        async for msg in sock:
            if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break
        return sock

    def constant(value):
        async def handler(_request: web.Request) -> web.Response:
            return web.json_response(value)

        return handler

    async def post_setting(request: web.Request) -> web.Response:
        settings[request.match_info["id"]] = await request.json()
        return web.json_response({})

    async def post_settings(request: web.Request) -> web.Response:
        settings.update(await request.json())
        return web.json_response({})

    async def not_found(request: web.Request) -> web.Response:
        missing.append(f"{request.method} {request.path_qs}")
        return web.json_response({"error": "not found"}, status=404)

    stats = {
        "system": {
            "os": "posix",
            "python_version": platform.python_version(),
            "embedded_python": False,
            "comfyui_version": "0.8.0",
            "pytorch_version": "2.5.1",
            "argv": ["main.py"],
            "ram_total": 1 << 34,
            "ram_free": 1 << 33,
        },
        "devices": [{"name": "cpu", "type": "cpu", "index": None, "vram_total": 0, "vram_free": 0}],
    }
    app = web.Application()
    for prefix in ("", "/api"):
        app.router.add_get(prefix + "/ws", ws)
        app.router.add_get(prefix + "/object_info", constant(object_info))
        app.router.add_get(prefix + "/system_stats", constant(stats))
        app.router.add_get(prefix + "/users", constant({"storage": "server", "migrated": True}))
        app.router.add_get(prefix + "/settings", lambda _r: web.json_response(settings))
        app.router.add_post(prefix + "/settings", post_settings)
        app.router.add_post(prefix + "/settings/{id}", post_setting)
        app.router.add_get(prefix + "/userdata", constant([]))
        app.router.add_get(prefix + "/v2/userdata", constant([]))
        app.router.add_get(prefix + "/extensions", constant([]))
        app.router.add_get(prefix + "/embeddings", constant([]))
        app.router.add_get(prefix + "/features", constant({}))
        app.router.add_get(prefix + "/i18n", constant({}))
        app.router.add_get(prefix + "/experiment/models", constant([]))
        app.router.add_get(prefix + "/workflow_templates", constant({}))
        app.router.add_get(prefix + "/global_subgraphs", constant({}))
        app.router.add_get(prefix + "/queue", constant({"queue_running": [], "queue_pending": []}))
        app.router.add_get(prefix + "/history", constant({}))
        app.router.add_get(prefix + "/prompt", constant({"exec_info": {"queue_remaining": 0}}))
    app.router.add_get("/", index)
    app.router.add_static("/", static, show_index=False)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


HELPERS = """(cases) => {
    const app = window.app, LG = window.LiteGraph;
    const h = {cases};
    h.add = (type, title) => {
        const node = LG.createNode(type);
        if (title) node.title = title;
        app.graph.add(node);
        return node;
    };
    h.link = (from, slot, to, input) => {
        const index = typeof input === "number" ? input : to.inputs.findIndex((i) => i.name === input);
        if (index < 0) throw new Error(`${to.type} has no input ${input}`);
        if (!from.connect(slot, to, index)) throw new Error(`cannot link ${from.type} to ${to.type}.${input}`);
    };
    h.txt2img = () => {
        const g = {
            ckpt: h.add("CheckpointLoaderSimple"), pos: h.add("CLIPTextEncode", "Positive"),
            neg: h.add("CLIPTextEncode", "Negative"), latent: h.add("EmptyLatentImage"),
            sampler: h.add("KSampler"), decode: h.add("VAEDecode"), save: h.add("SaveImage"),
        };
        g.pos.widgets[0].value = "a lighthouse at dusk";
        g.neg.widgets[0].value = "blurry";
        g.sampler.widgets[0].value = 42;
        h.link(g.ckpt, 0, g.sampler, "model"); h.link(g.ckpt, 1, g.pos, "clip"); h.link(g.ckpt, 1, g.neg, "clip");
        h.link(g.pos, 0, g.sampler, "positive"); h.link(g.neg, 0, g.sampler, "negative");
        h.link(g.latent, 0, g.sampler, "latent_image"); h.link(g.sampler, 0, g.decode, "samples");
        h.link(g.ckpt, 2, g.decode, "vae"); h.link(g.decode, 0, g.save, "images");
        return g;
    };
    return h;
}"""

LOAD = """async ([workflow, name]) => {
    await window.app.loadGraphData(workflow, true, true, name, {openSource: 'template'});
    const outputs = [];
    for (let i = 0; i < 3; i++) outputs.push(JSON.stringify((await window.app.graphToPrompt()).output));
    return outputs;
}"""


def legacy_inputs(workflow: dict) -> dict:
    """The workflow as frontends before widget sockets (1.16) saved it: a node lists only its input
    slots and the widgets converted to inputs (linked ones), so the unlinked widget inputs go, and
    links are renumbered to the slots left. Group definitions get the same treatment."""
    out = json.loads(json.dumps(workflow))

    def prune(node: dict, linked: set[int]) -> dict[int, int]:
        inputs = node.get("inputs") or []
        kept = [k for k, i in enumerate(inputs) if not i.get("widget") or k in linked]
        node["inputs"] = [inputs[k] for k in kept]
        return {old: new for new, old in enumerate(kept)}

    for node in out["nodes"]:
        linked = {k for k, i in enumerate(node.get("inputs") or []) if i.get("link") is not None}
        slots = prune(node, linked)
        for link in out["links"]:
            if link[3] == node["id"]:
                link[4] = slots[link[4]]
    for definition in (out.get("extra") or {}).get("groupNodes", {}).values():
        for index, node in enumerate(definition["nodes"]):
            slots = prune(node, {link[3] for link in definition["links"] if link[2] == index})
            for link in definition["links"]:
                if link[2] == index:
                    link[3] = slots[link[3]]
    return out


async def build_cases(page, cases_js: str, out_dir: Path) -> list[Path]:
    """Build each case of ``cases_js`` in a fresh graph, turn its node lists into group nodes with the
    frontend's own command (its name dialog answered), and save the workflow as ``<case>.json``."""
    names = await page.evaluate(
        "(src) => { window.__cases = eval(src); return Object.keys(window.__cases); }", cases_js
    )
    paths = []
    for name in names:
        groups = await page.evaluate(
            f"""() => {{
                window.app.graph.clear();
                window.__h = ({HELPERS})(window.__cases);
                window.__groups = window.__cases[{json.dumps(name)}].build(window.__h);
                window.__made = [];
                return window.__groups.length;
            }}"""
        )
        for index in range(groups):
            await page.evaluate(
                f"""() => {{
                    const nodes = window.__groups[{index}];
                    window.app.canvas.deselectAll();
                    for (const node of nodes) window.app.canvas.select(node);
                    window.__pending = window.comfyAPI.groupNode.GroupNodeHandler.fromNodes(nodes);
                }}"""
            )
            field = page.locator(".p-dialog input")
            await field.fill(f"{name}_{index + 1}" if groups > 1 else name)
            await field.press("Enter")
            await page.evaluate("async () => { window.__made.push(await window.__pending); }")
        workflow = await page.evaluate(
            f"""() => {{
                const c = window.__cases[{json.dumps(name)}];
                if (c.after) c.after(window.__h, window.__made);
                return window.app.graph.serialize();
            }}"""
        )
        path = out_dir / f"{name}.json"
        path.write_text(json.dumps(workflow, indent=1) + "\n", encoding="utf-8")
        paths.append(path)
        print(f"built {path}")
        if await page.evaluate(f"() => !!window.__cases[{json.dumps(name)}].legacy"):
            path = out_dir / f"{name}.legacy.json"
            path.write_text(json.dumps(legacy_inputs(workflow), indent=1) + "\n", encoding="utf-8")
            paths.append(path)
            print(f"built {path} (inputs as frontends before 1.16 saved them)")
    return paths


async def run(paths: list[Path], out_dir: Path, object_info: dict, cases_js: str | None = None) -> int:
    from playwright.async_api import Error as PlaywrightError
    from playwright.async_api import async_playwright

    missing: list[str] = []
    runner = web.AppRunner(make_app(object_info, missing))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    origin = f"http://127.0.0.1:{port}"
    failures = 0
    console: list[str] = []

    async def fresh_page(browser):
        """A new page with the frontend loaded; requests anywhere but our server are refused."""
        page = await browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type in ("warning", "error") else None)
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)

        async def only_local(route):
            if route.request.url.startswith(origin):
                await route.continue_()
            else:
                console.append(f"blocked: {route.request.url}")
                await route.abort()

        await page.route("**/*", only_local)
        await page.goto(origin + "/")
        await page.wait_for_function("() => window.app && window.app.graph && window.app.vueAppReady", timeout=60000)
        return page

    def flush(header: str) -> None:
        print(header)
        for line in console:
            if "Failed to load resource" not in line and "Use of defaultInput" not in line:
                print("   ", line[:300])
        deprecated = sum("Use of defaultInput" in line for line in console)
        if deprecated:
            print(f"    ({deprecated} warnings 'Use of defaultInput on required input ... is deprecated')")
        console.clear()

    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            out_dir.mkdir(parents=True, exist_ok=True)
            if cases_js is not None:
                page = await fresh_page(browser)
                paths = [*paths, *await build_cases(page, cases_js, out_dir)]
                await page.close()
                flush("building the cases:")
            for path in paths:
                page = await fresh_page(browser)  # a fresh page each: no group node types left from before
                console.clear()
                workflow = json.loads(path.read_text(encoding="utf-8"))
                name = path.name.removesuffix(".json")
                try:
                    outputs = await page.evaluate(LOAD, [workflow, path.name])
                except PlaywrightError as exc:  # the frontend itself fails on it: say so, go on
                    flush(f"{name}: the frontend failed: {str(exc).splitlines()[0]}")
                    failures += 1
                    continue
                finally:
                    await page.close()
                if len(set(outputs)) != 1:
                    print(f"{name}: graphToPrompt gave different prompts on three calls")
                    failures += 1
                prompt = json.loads(outputs[0])
                (out_dir / f"{name}.api.json").write_text(json.dumps(prompt, indent=2) + "\n", encoding="utf-8")
                flush(f"{name}: {len(prompt)} nodes")
            await browser.close()
    finally:
        await runner.cleanup()
    print(f"comfyui-frontend-package {frontend_version()}")
    for line in sorted(set(missing)):
        print("answered 404:", line)
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("workflows", type=Path, nargs="*")
    parser.add_argument("--build", type=Path, help="a cases file (tools/group_node_cases.js): build them first")
    parser.add_argument("--object-info", type=Path, default=DEFAULT_OBJECT_INFO)
    args = parser.parse_args()
    object_info = json.loads(args.object_info.read_text(encoding="utf-8"))
    cases = args.build.read_text(encoding="utf-8") if args.build else None
    sys.exit(1 if asyncio.run(run(args.workflows, args.out_dir, object_info, cases)) else 0)


if __name__ == "__main__":
    main()
