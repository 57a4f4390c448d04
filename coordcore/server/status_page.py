"""The status page served at ``/`` of the metrics port: one self-contained HTML document.

It polls ``/status.json`` once a second (same origin, so a browser resends the basic
auth it was asked for) and redraws in place; keys are paged (``after``/``count``), so
100k keys cost one page per poll. Values are inserted as text, never as markup.
"""
from __future__ import annotations

__all__ = ["PAGE"]

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>coordcore status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em;margin:0 0 .5em} h2{font-size:1.05em;margin:1.2em 0 .4em}
.cards{display:flex;flex-wrap:wrap;gap:.6em}
.card{border:1px solid #ccc;border-radius:6px;padding:.4em .8em;min-width:8em}
.card b{display:block;font-size:1.3em}
table{border-collapse:collapse;width:100%} th,td{border-bottom:1px solid #eee;padding:.25em .5em;text-align:left}
th{background:#f6f6f6} #err{color:#b00} .muted{color:#777} button{margin-right:.5em}
</style></head><body>
<h1>coordcore <span id="role" class="muted"></span></h1>
<div id="err"></div>
<div class="cards" id="cards"></div>
<h2>Locks <span class="muted" id="pageinfo"></span></h2>
<div><button id="first">first page</button><button id="more">next page</button></div>
<table><thead><tr><th>key</th><th>kind</th><th>mode</th><th>holders (session: token)</th>
<th>waiters</th><th>oldest wait ms</th></tr></thead><tbody id="locks"></tbody></table>
<h2>Wait and hold times <span class="muted">(batch time, ms, since the service opened)</span></h2>
<table><thead><tr><th>kind</th><th>waits</th><th>wait mean</th><th>wait p50 / p99</th><th>holds</th>
<th>hold mean</th><th>hold p50 / p99</th></tr></thead><tbody id="timings"></tbody></table>
<h2>Pools <span class="muted" id="poolinfo"></span></h2>
<table><thead><tr><th>pool</th><th>capacity</th><th>held</th><th>waiting</th>
<th>tenants (held / fair share)</th></tr></thead><tbody id="pools"></tbody></table>
<p class="muted">Refreshed every second from <a href="status.json">/status.json</a>;
<a href="metrics">/metrics</a> for Prometheus.</p>
<script>
"use strict";
let after = 0, next = null;
const $ = (id) => document.getElementById(id);
function cell(tr, text) { const td = document.createElement("td"); td.textContent = text; tr.appendChild(td); }
function card(box, label, value) {
  const d = document.createElement("div"); d.className = "card";
  const b = document.createElement("b"); b.textContent = String(value); d.appendChild(b);
  d.appendChild(document.createTextNode(label)); box.appendChild(d);
}
function people(list, count, withToken) {
  const shown = list.map((c) => withToken ? c.session + ": " + c.token : String(c.session)).join(", ");
  return count > list.length ? shown + " (+" + (count - list.length) + " more)" : shown;
}
function draw(s) {
  $("role").textContent = s.server.role + " on port " + s.server.port + ", up " + s.server.uptime_seconds + " s"
    + (s.cluster ? " (cluster: " + s.cluster.role + ", leader " + (s.cluster.leader || "-") + ")" : "");
  const cards = $("cards"); cards.replaceChildren();
  card(cards, "revision", s.revision ?? "-"); card(cards, "sessions", s.sessions ?? "-");
  card(cards, "keys held", s.keys ?? "-"); card(cards, "waiters", s.waiters ?? "-");
  card(cards, "connections", s.server.connections);
  if (s.batches) { card(cards, "batches", s.batches.batches);
    card(cards, "commands / batch", s.batches.batches ? (s.batches.commands / s.batches.batches).toFixed(1) : "0"); }
  if (s.fsync) card(cards, "fsync mean ms", (s.fsync.mean_seconds * 1000).toFixed(2));
  const body = $("locks"); body.replaceChildren();
  for (const k of s.locks) {
    const tr = document.createElement("tr"); tr.dataset.key = k.key;
    cell(tr, k.key); cell(tr, k.kind); cell(tr, k.mode);
    cell(tr, people(k.holders, k.holder_count, true)); cell(tr, people(k.waiters, k.waiter_count, false));
    cell(tr, k.waiter_count ? (k.oldest_wait_ms ?? "unknown") : "-");
    body.appendChild(tr);
  }
  if (!s.locks.length) { const tr = document.createElement("tr"); cell(tr, "no key is held"); body.appendChild(tr); }
  const timings = $("timings"); timings.replaceChildren();
  if (s.timings) {
    // A quantile is a bucket's upper bound ("<= n"); null above the last bound or with none seen.
    const q = (v, n) => n ? (v === null ? "> " + s.timings.bounds_ms[s.timings.bounds_ms.length - 1] : "<= " + v) : "-";
    for (const kind of Object.keys(s.timings.waits)) {
      const w = s.timings.waits[kind], h = s.timings.holds[kind];
      const tr = document.createElement("tr"); tr.dataset.kind = kind;
      cell(tr, kind); cell(tr, w.count); cell(tr, w.mean_ms ?? "-"); cell(tr, q(w.p50_ms, w.count) + " / " + q(w.p99_ms, w.count));
      cell(tr, h.count); cell(tr, h.mean_ms ?? "-"); cell(tr, q(h.p50_ms, h.count) + " / " + q(h.p99_ms, h.count));
      timings.appendChild(tr);
    }
  }
  const pools = $("pools"); pools.replaceChildren();
  for (const p of (s.pools || [])) {
    const tr = document.createElement("tr"); tr.dataset.pool = p.pool;
    cell(tr, p.pool); cell(tr, p.capacity); cell(tr, p.held); cell(tr, p.waiting);
    const shown = p.tenants.map((t) => t.tenant + " " + t.held + " / " + t.share).join(", ");
    cell(tr, p.tenant_count > p.tenants.length ? shown + " (+" + (p.tenant_count - p.tenants.length) + " more)" : shown);
    pools.appendChild(tr);
  }
  if (!(s.pools || []).length) { const tr = document.createElement("tr"); cell(tr, "no pool is defined"); pools.appendChild(tr); }
  const pt = s.pool_totals;
  $("poolinfo").textContent = pt ? "(" + pt.pools + " pools, " + pt.held + " of " + pt.capacity + " units held, "
    + pt.waiting + " waiting; " + pt.preemptions + " preemptions, " + pt.revocations + " revocations)" : "";
  next = s.next;
  $("pageinfo").textContent = "(" + s.locks.length + " shown from cursor " + after + (next ? ", more follow" : "") + ")";
  $("more").disabled = !next;
}
async function poll() {
  try {
    const r = await fetch("status.json?count=100&after=" + after, {cache: "no-store", credentials: "same-origin"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    draw(await r.json()); $("err").textContent = "";
  } catch (e) { $("err").textContent = "not refreshed: " + e.message; }
}
$("first").onclick = () => { after = 0; poll(); };
$("more").onclick = () => { if (next) { after = next; poll(); } };
poll(); setInterval(poll, 1000);
</script></body></html>
"""
