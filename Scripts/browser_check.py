#!/usr/bin/env python3
"""The engineer's path as a person checks it: headless Chromium opens the sign-in link
`relayctl session open` prints, lands on the demo component's page through its own local host
name (http://ui.bench.localhost:PORT/), where the page's websocket shows live values, and saves a
screenshot of it.

Checks, each a failure if not so: the link signs in and leaves the address bar without its token;
the page's script cannot read relayctl's cookie (HttpOnly); the live value changes over the
websocket (two readings, the second higher); the page's own fetch of /api/status works; the same
page in a browser that has not signed in gets 401; a page from another site, in the signed-in browser,
cannot open a websocket through the session. Needs Chromium (Debian package `chromium`) and
PyPI `websockets`; loopback only, every wait bounded.

  Scripts/browser-check.sh [--debug] [--no-build] [--screenshot PATH]
"""
import argparse, asyncio, base64, json, os, re, shutil, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import ROOT, Stack, free_port, log_tail, built_bin, wait_port  # noqa: E402


def bin_dir(debug, no_build):
    return built_bin(no_build, debug=debug)


def sign_in_link(stack, name="relayctl"):
    with open(stack.log(name), errors="replace") as f:
        found = re.search(r"^ui: open (http://\S+) in your browser", f.read(), re.M)
    if not found:
        raise SystemExit(f"relayctl printed no sign-in link for ui{log_tail(stack.log(name))}")
    return found.group(1)


class Browser:
    """One headless Chromium page driven over the DevTools protocol."""

    def __init__(self, chromium, work, flags=(), size="1000,600"):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", f"--window-size={size}", *flags,
             f"--remote-debugging-port={self.port}", f"--user-data-dir={work}/chromium", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=open(f"{work}/chromium.log", "w"))
        deadline = time.time() + 60
        while True:
            try:
                targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2))
                self.target = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
                break
            except Exception:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise SystemExit(f"Chromium did not start{log_tail(f'{work}/chromium.log')}")
                time.sleep(0.2)
        self.next_id = 0
        self.events = []  # DevTools events seen while waiting for answers

    async def __aenter__(self):
        import websockets
        self.socket = await websockets.connect(self.target, max_size=64 << 20)
        return self

    async def __aexit__(self, *exc):
        await self.socket.close()

    async def call(self, method, **params):
        self.next_id += 1
        await self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(await asyncio.wait_for(self.socket.recv(), 30))
            if "method" in message:
                self.events.append(message)
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise SystemExit(f"{method}: {message['error']}")
                return message["result"]

    async def evaluate(self, expression):
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        return result["result"].get("value")

    async def wait_for(self, what, expression, test, seconds=30):
        deadline = time.time() + seconds
        while time.time() < deadline:
            value = await self.evaluate(expression)
            if test(value):
                return value
            await asyncio.sleep(0.2)
        raise SystemExit(f"the page never showed {what} within {seconds} s (last: {value!r})")

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def check(browser, link, screenshot, other_site):
    await browser.call("Page.enable")
    await browser.call("Page.navigate", url=link)
    address = await browser.wait_for("the component's page", "document.readyState === 'complete' && location.href",
                                     lambda v: bool(v) and v.startswith("http://ui.bench.localhost:"))
    if "relayctl-token" in address:
        raise SystemExit(f"the sign-in token stayed in the address bar: {address}")
    if await browser.evaluate("document.cookie") != "":
        raise SystemExit("the page's script can read relayctl's cookie (it must be HttpOnly)")
    tick = lambda text: int(text.split()[1]) if text and text.startswith("tick ") else None  # noqa: E731
    first = tick(await browser.wait_for("a live value", "document.getElementById('live').textContent", lambda v: tick(v) is not None))
    later = tick(await browser.wait_for("the live value change", "document.getElementById('live').textContent",
                                        lambda v: (tick(v) or 0) >= first + 2))
    state = await browser.evaluate("document.getElementById('state').textContent")
    status = await browser.evaluate("fetch('/api/status').then(r => r.status + ' ' + r.headers.get('content-type'))")
    if not status.startswith("200"):
        raise SystemExit(f"the page's fetch of /api/status answered {status}")
    shot = await browser.call("Page.captureScreenshot", format="png")
    with open(screenshot, "wb") as f:
        f.write(base64.b64decode(shot["data"]))
    # Another site's page in the same, signed-in browser: its websocket to the session is refused.
    await browser.call("Page.navigate", url=other_site)
    await browser.wait_for("the other site's page", "document.readyState === 'complete' && location.href", lambda v: bool(v) and v.startswith(other_site))
    await browser.call("Network.enable")
    target = address.replace("http://", "ws://") + "ws/live"
    cross = await browser.evaluate(
        "new Promise(done => { const s = new WebSocket('" + target + "'); "
        "s.onopen = () => done('open'); s.onclose = (e) => done('closed ' + e.code); setTimeout(() => done('no answer'), 10000); })")
    if cross == "open":
        raise SystemExit(f"a page from {other_site} opened a websocket through the session")
    # A browser reports any failed websocket as 1006 to the page; DevTools says what the handshake got.
    created = [e["params"]["requestId"] for e in browser.events
               if e["method"] == "Network.webSocketCreated" and e["params"]["url"] == target]
    errors = [e["params"]["errorMessage"] for e in browser.events
              if e["method"] == "Network.webSocketFrameError" and e["params"]["requestId"] in created]
    if not any("response code: 403" in error for error in errors):
        raise SystemExit(f"the websocket from {other_site} was not refused with 403 ({cross}; errors: {errors})")
    return address, first, later, state, f"{cross} in the page; the handshake got 403"


async def unsigned(browser, address):
    """A second browser profile that never used the link."""
    await browser.call("Page.enable")
    await browser.call("Page.navigate", url=address)
    return await browser.wait_for("relayctl's 401", "document.readyState === 'complete' && document.body.innerText",
                                  lambda v: bool(v) and "local_sign_in_required" in v)


def arguments(doc, screenshot):
    """The options of the Chromium checks: build, screenshot path, Chromium."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="use the debug build (the one `swift test` built)")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--screenshot", default=os.path.join(ROOT, ".build", screenshot))
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser") or "chromium")
    return parser.parse_args()


def start_component(binaries):
    """The demo component `ui` on a free loopback port: (process, port)."""
    port = free_port()
    component = subprocess.Popen([f"{binaries}/demo-component", "--listen", f"127.0.0.1:{port}", "--name", "ui"], stdout=subprocess.DEVNULL)
    try:
        wait_port(port, proc=component)
    except BaseException:
        component.terminate()
        raise
    return component, port


def main():
    args = arguments(__doc__, "browser-check.png")
    binaries = bin_dir(args.debug, args.no_build)
    work = tempfile.mkdtemp(prefix="relay-browser-")
    component, port = start_component(binaries)
    stack, browsers = None, []
    try:
        stack = Stack(work, binaries, port)
        stack.start("connector", [f"{binaries}/connector", "--config", f"{work}/connector.yaml", "--log-level", "warning"])
        stack.request_access("1h", "browser check")
        stack.open_session()
        link = sign_in_link(stack)
        os.makedirs(os.path.dirname(os.path.abspath(args.screenshot)), exist_ok=True)

        async def run():
            signed = Browser(args.chromium, f"{work}/a")
            browsers.append(signed)
            async with signed as page:
                result = await check(page, link, args.screenshot, f"http://127.0.0.1:{port}/")
            other = Browser(args.chromium, f"{work}/b")
            browsers.append(other)
            async with other as page:
                refused = await unsigned(page, result[0])
            return result, refused

        os.makedirs(f"{work}/a", exist_ok=True)
        os.makedirs(f"{work}/b", exist_ok=True)
        (address, first, later, state, cross), refused = asyncio.run(run())
        print(f"browser check: ok. {address} (signed in with the one-time link, token gone from the address bar, "
              f"cookie hidden from scripts) showed live values tick {first} then tick {later} over its websocket {state}; "
              f"its fetch of /api/status answered 200; a websocket from another site's page in the same browser was refused ({cross}); a browser that had not signed in got 401 "
              f"({refused.strip().splitlines()[0][:80]}...). Screenshot: {os.path.abspath(args.screenshot)}")
    finally:
        for browser in browsers:
            browser.close()
        if stack:
            stack.stop()
        component.terminate()


if __name__ == "__main__":
    main()
