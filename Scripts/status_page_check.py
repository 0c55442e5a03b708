#!/usr/bin/env python3
"""The operators' status page as an operator sees it: headless Chromium opens
https://RELAY/ops/status on a relay with a connector and an expert's session, is sent to the
sign-in form, signs in with an ops token, and lands on the page, which shows the relay node, the
cluster with its node, the session and its request; then waits for the page to refresh itself and
saves a screenshot.

Checks, each a failure if not so: the page needs signing in; the session cookie is hidden from
scripts (HttpOnly) and the page has no script at all; what it shows matches what runs; it reloads
by itself within 25 s. Needs Chromium (Debian package `chromium`) and PyPI `websockets`; loopback
only, every wait bounded.

  python3 Scripts/status_page_check.py [--debug] [--no-build] [--screenshot PATH]
"""
import asyncio, base64, os, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import Stack, built_bin  # noqa: E402
from browser_check import Browser, arguments, start_component  # noqa: E402


async def check(page, base, ops_token, screenshot):
    await page.call("Page.enable")
    # The page itself runs no script (its CSP forbids any); the checker's own evaluations may.
    await page.call("Page.setBypassCSP", enabled=True)
    await page.call("Page.navigate", url=f"{base}/ops/status")
    await page.wait_for("the sign-in form", "document.readyState === 'complete' && location.pathname", lambda v: v == "/ops/sign-in")
    await page.evaluate("document.querySelector('input[name=token]').value = " + repr(ops_token) + "; document.forms[0].submit(); true")
    text = await page.wait_for("the status page", "document.readyState === 'complete' && location.pathname === '/ops/status' && document.body.innerText",
                               lambda v: bool(v) and "Active sessions" in v)
    problems = []
    for shown in ["relay-1", "bench", "n1", "Active sessions 1", "Active requests 1", "live", "requested"]:
        if shown not in text:
            problems.append(f"the page does not show {shown!r}")
    if await page.evaluate("document.cookie") != "":
        problems.append("the page's script could read the session cookie (it must be HttpOnly)")
    if await page.evaluate("document.scripts.length") != 0:
        problems.append("the page has a script")
    origin = await page.evaluate("performance.timeOrigin")
    await page.wait_for("the page to refresh itself", "performance.timeOrigin", lambda v: v is not None and v != origin, seconds=25)
    await page.wait_for("the refreshed page", "document.readyState === 'complete' && document.body.innerText",
                        lambda v: bool(v) and "Active sessions" in v)
    shot = await page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    with open(screenshot, "wb") as f:
        f.write(base64.b64decode(shot["data"]))
    return text, problems


def main():
    args = arguments(__doc__, "status-page.png")
    binaries = built_bin(args.no_build, args.debug)
    work = tempfile.mkdtemp(prefix="relay-status-page-")
    component, port = start_component(binaries)
    stack, browser = None, None
    try:
        stack = Stack(work, binaries, port)
        stack.start("connector", [f"{binaries}/connector", "--config", f"{work}/connector.yaml", "--log-level", "warning"])
        stack.request_access("1h", "status page check")
        stack.open_session()
        os.makedirs(os.path.dirname(os.path.abspath(args.screenshot)), exist_ok=True)
        os.makedirs(f"{work}/chrome", exist_ok=True)
        # The relay's certificate is the dev CA's: this throwaway profile accepts it.
        browser = Browser(args.chromium, f"{work}/chrome", flags=["--ignore-certificate-errors"], size="1280,900")

        async def run():
            async with browser as page:
                return await check(page, f"https://127.0.0.1:{stack.relay_port}", stack.ops_token, args.screenshot)

        started = time.time()
        text, problems = asyncio.run(run())
        if problems:
            raise SystemExit("status page check failed:\n  " + "\n  ".join(problems))
        print(f"status page check: ok in {time.time() - started:.1f} s. Signed in with an ops token through the form; the page showed "
              f"the relay node, cluster bench with node n1, 1 active session and 1 active request, had no script and a cookie "
              f"hidden from scripts, and refreshed itself. Screenshot: {os.path.abspath(args.screenshot)}")
    finally:
        if browser:
            browser.close()
        if stack:
            stack.stop()
        component.terminate()


if __name__ == "__main__":
    main()
