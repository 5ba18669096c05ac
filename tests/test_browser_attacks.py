"""A real browser (headless Chromium) attacking a node without a token, as a web page can: a page on
another origin (another port of the node's advertised host) posting a delete and a field-less drain the
way a browser allows without a CORS preflight, and a page that rebinds its DNS name to the node's
address. The node must stay untouched, and its own dashboard must still work in the same browser."""

from __future__ import annotations

import functools
import http.server
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mcpdb.ops.localcluster import ClusterLayout, LocalCluster, free_port
from tests.browser import chromium, rendered_dom

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (scripts/setup installs it)"),
]

TASK = {"kind": "task", "domain": "d", "goal": "g"}
ATTACK_PAGE = """<!doctype html><html><body><p id="state">running</p><script>
const node = %(node)s;
const del = JSON.stringify({ops: [{op: "delete", id: "victim"}]});
const put = JSON.stringify({kind: "task", domain: "d", goal: "pwned"});
// Requests a page on any site may send without a CORS preflight ("simple" requests).
Promise.allSettled([
  fetch(node + "/v1/namespaces/acme/batch", {method: "POST", mode: "no-cors", body: del,
                                             headers: {"Content-Type": "text/plain"}}),
  fetch(node + "/v1/namespaces/acme/batch", {method: "POST", mode: "no-cors", body: new Blob([del])}),
  fetch(node + "/v1/namespaces/acme/contexts/victim", {method: "PUT", body: put,
                                                        headers: {"Content-Type": "application/json"}}),
  // What a form without fields posts: no body, so no Content-Type.
  fetch(node + "/v1/node/drain?timeout=1", {method: "POST", mode: "no-cors"}),
]).then(results => {
  document.getElementById("state").textContent = "done " + results.map(r => r.status).join(",");
});
</script></body></html>"""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One node advertising its own URL, as every Kubernetes pod does (http://$POD_IP:7700): the attack
    page is on the same host, at another port."""
    layout = ClusterLayout.fresh(1)
    layout.extra_args = ["--no-inference", "--advertise-url", layout.nodes[0].url]
    running = LocalCluster(layout, Path(tmp_path_factory.mktemp("browser-attacks")) / "cluster")
    try:
        running.start_all()
        running.wait_ready(timeout=30)
        yield running
    finally:
        running.stop_all(graceful=False)


@pytest.fixture
def attacker_site(tmp_path: Path, node: LocalCluster) -> Iterator[str]:
    """A web site on another origin (another port of this machine) serving the attack page."""
    (tmp_path / "attack.html").write_text(ATTACK_PAGE % {"node": f'"{node.urls()[0]}"'})
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _victim(url: str) -> dict[str, object]:
    response = httpx.get(f"{url}/v1/namespaces/acme/contexts/victim")
    assert response.status_code == 200, "the victim context was deleted"
    return response.json()


def test_a_page_on_another_origin_cannot_write(node: LocalCluster, attacker_site: str) -> None:
    url = node.urls()[0]
    assert httpx.put(f"{url}/v1/namespaces/acme/contexts/victim", json=TASK).status_code in (200, 201)
    dom = rendered_dom(f"{attacker_site}/attack.html")
    assert "done" in dom, dom  # the page ran its attack to the end
    assert _victim(url)["goal"] == "g"
    metrics = httpx.get(url + "/metrics").text
    drains = re.findall(r'_count\{method="POST",route="/v1/node/drain",status="(\d+)"\}', metrics)
    assert drains == ["403"]  # the page's drain was refused, not served


def test_a_rebound_name_gets_nothing_and_the_dashboard_still_works(node: LocalCluster) -> None:
    url = node.urls()[0]
    port = url.rsplit(":", 1)[1]
    # The browser resolves evil.example to this machine, as a rebinding attacker's DNS would.
    rebound = rendered_dom(f"http://evil.example:{port}/ui", "--host-resolver-rules=MAP evil.example 127.0.0.1")
    assert "misdirected_request" in rebound and "<svg" not in rebound
    dashboard = rendered_dom(f"{url}/ui")
    assert "misdirected_request" not in dashboard and "n1" in dashboard
