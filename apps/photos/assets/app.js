'use strict';
// A tab is known by the browser's visitor cookie (set by the server with this page, HttpOnly,
// sent with every request) and its own id (kept in sessionStorage for the tab's life, as
// cookies are shared by all tabs), sent with uploads and on its WebSocket: the server pushes
// each photo's progress to the tab that uploaded it.
const tab = sessionStorage.getItem('photos-tab') || ('tab-' + crypto.getRandomValues(new Uint32Array(2)).join('-'));
sessionStorage.setItem('photos-tab', tab);

const $ = id => document.getElementById(id);
const jobs = new Map();

function notice(text, isError) {
  const n = $('notice');
  n.textContent = text;
  n.className = 'notice' + (isError ? ' error' : '');
  n.hidden = !text;
}

function jobItem(id, name) {
  let li = jobs.get(id);
  if (!li) {
    $('jobs').querySelector('.empty')?.remove();
    li = document.createElement('li');
    li.className = 'job';
    li.dataset.id = id;
    li.innerHTML = '<span class="name"></span><span class="state"></span>';
    li.querySelector('.name').textContent = name || id;
    $('jobs').prepend(li);
    jobs.set(id, li);
  }
  return li;
}

function setState(id, text, kind) {
  const li = jobs.get(id);
  if (!li) return;
  li.querySelector('.state').textContent = text;
  if (kind) li.className = 'job ' + kind;
}

function figure(photo) {
  const f = document.createElement('figure');
  f.className = 'photo' + (photo.state === 'failed' ? ' failed' : '');
  f.dataset.id = photo.id;
  const cap = document.createElement('figcaption');
  const name = document.createElement('span');
  name.textContent = photo.name;
  cap.append(name);
  const meta = document.createElement('span');
  meta.className = 'meta';
  if (photo.state === 'done') {
    const medium = photo.sizes.find(s => s.size === 'medium') || photo.sizes[0];
    const img = document.createElement('img');
    img.src = medium.url;
    img.alt = photo.name;
    img.loading = 'lazy';
    f.append(img);
    meta.textContent = `${photo.width}×${photo.height} ${photo.format || ''} · by ${photo.by || '?'}`;
    const sizes = document.createElement('span');
    sizes.className = 'meta sizes';
    for (const s of photo.sizes) {
      const a = document.createElement('a');
      a.href = s.url;
      a.textContent = `${s.size} ${s.width}×${s.height}`;
      a.className = 'size';
      a.dataset.size = s.size;
      a.dataset.width = s.width;
      a.dataset.height = s.height;
      sizes.append(a);
    }
    cap.append(meta, sizes);
  } else if (photo.state === 'failed') {
    const b = document.createElement('div');
    b.className = 'broken';
    b.textContent = '✕';
    f.append(b);
    meta.textContent = photo.error || 'failed';
    meta.className = 'meta error';
    cap.append(meta);
  } else {
    return null;
  }
  f.append(cap);
  return f;
}

function showPhoto(photo) {
  const f = figure(photo);
  if (!f) return;
  const old = $('gallery').querySelector(`[data-id="${photo.id}"]`);
  if (old) old.replaceWith(f); else $('gallery').prepend(f);
}

async function loadGallery() {
  try {
    const r = await fetch('/api/photos');
    const photos = await r.json();
    $('gallery').replaceChildren();
    for (const p of photos.reverse()) showPhoto(p);
  } catch (e) {
    notice('The gallery could not be loaded: ' + e, true);
  }
}

let socket;
function connect() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  socket = new WebSocket(`${scheme}://${location.host}/ws`, ['photos.v1']);
  socket.onopen = () => socket.send(JSON.stringify({ tab }));
  socket.onclose = () => {
    $('link').textContent = 'reconnecting…'; $('link').className = 'pill off';
    setTimeout(connect, 1000);
  };
  socket.onmessage = e => {
    let m;
    try { m = JSON.parse(e.data); } catch { return; }
    switch (m.type) {
      case 'hello': $('link').textContent = 'live'; $('link').className = 'pill on'; $('link').dataset.protocol = socket.protocol; $('link').dataset.extensions = socket.extensions; break;
      case 'queued': jobItem(m.id, m.name); setState(m.id, 'queued'); break;
      case 'started': setState(m.id, (m.attempt > 1 ? 'retrying' : 'started') + ' on ' + m.by); break;
      case 'size': setState(m.id, `${m.size} ${m.width}×${m.height} done`); break;
      case 'done': jobItem(m.photo.id, m.photo.name); setState(m.photo.id, 'done', 'done'); showPhoto(m.photo); break;
      case 'failed': jobItem(m.photo.id, m.photo.name); setState(m.photo.id, 'failed: ' + (m.photo.error || ''), 'failed'); showPhoto(m.photo); break;
    }
  };
}

async function upload(files) {
  if (!files.length) return;
  const form = new FormData();
  form.append('tab', tab);
  for (const f of files) form.append('photos', f, f.name);
  notice(`Uploading ${files.length} file${files.length > 1 ? 's' : ''}…`);
  try {
    const r = await fetch('/upload', { method: 'POST', body: form });
    let answer = {};
    try { answer = await r.json(); } catch { /* a proxy's page, say */ }
    for (const a of answer.accepted || []) { jobItem(a.id, a.name); }
    const refused = (answer.rejected || []).map(x => `${x.name}: ${x.error}`);
    if (answer.error) refused.unshift(answer.error);
    if (!r.ok && !refused.length) refused.push(`the server answered ${r.status}`);
    notice(refused.join(' · '), refused.length > 0);
  } catch (e) {
    notice('The upload failed: ' + e, true);
  }
}

const drop = $('drop');
$('choose').onclick = () => $('picker').click();
drop.onkeydown = e => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); $('picker').click(); } };
$('picker').onchange = () => { upload([...$('picker').files]); $('picker').value = ''; };
drop.ondragover = e => { e.preventDefault(); drop.classList.add('over'); };
drop.ondragleave = () => drop.classList.remove('over');
drop.ondrop = e => { e.preventDefault(); drop.classList.remove('over'); upload([...e.dataTransfer.files]); };

// The status panel: the tree's own figures (what `status --json` gives), every 2 s; the rate
// is worked out from the change in "done" between two readings.
let lastDone = null;
async function refreshStatus() {
  try {
    const r = await fetch('/api/status');
    const s = await r.json();
    if (s.error) throw new Error(s.error);
    $('status-node').textContent = `node ${s.node} · ${s.bus.backend}${s.bus.connected ? '' : ' (not connected)'}`;
    const pool = (s.pools || []).find(p => p.name === 'thumbs') || {};
    const now = performance.now();
    let rate = 0;
    if (lastDone && pool.done >= lastDone.done) rate = (pool.done - lastDone.done) / ((now - lastDone.at) / 1000);
    lastDone = { done: pool.done || 0, at: now };
    const figures = [['queued', pool.queued], ['running', pool.running], ['done', pool.done],
      ['failed', pool.failed], ['retried', pool.retried], ['per second', rate.toFixed(1)]];
    $('pool').replaceChildren(...figures.map(([label, value]) => {
      const d = document.createElement('div');
      d.className = 'figure';
      d.dataset.figure = label;
      const b = document.createElement('b');
      b.textContent = value ?? 0;
      const span = document.createElement('span');
      span.textContent = label;
      d.append(b, span);
      return d;
    }));
    // On NATS, every node of the cluster: its groups, or that it does not answer.
    const nodes = s.nodes || [];
    $('nodes').hidden = nodes.length === 0;
    $('nodes').replaceChildren(...nodes.map(n => {
      const li = document.createElement('li');
      li.dataset.node = n.node;
      const groups = (n.groups || []).map(g => `${g.name}×${g.processes}`).join(', ');
      li.textContent = n.reachable ? `${n.node} (${n.host}): ${groups}` : `${n.node}: not answering`;
      if (!n.reachable) li.className = 'down';
      return li;
    }));
    // Every node's processes on NATS (the census asks each node's master), this node's on the hub.
    const listed = nodes.length ? nodes.flatMap(n => n.reachable
      ? n.processes.map(p => ({ node: n.node, ...p }))
      : [{ node: n.node, down: true }]) : s.processes.map(p => ({ node: s.node, ...p }));
    const rows = listed.map(p => {
      const tr = document.createElement('tr');
      tr.dataset.node = p.node;
      if (p.busy) tr.className = 'busy';
      if (p.down) tr.className = 'down';
      const cells = p.down
        ? [p.node, 'not answering', '', '', '', '', '', '']
        : [p.node, `${p.worker} ${p.id}`, p.pid, (p.memory_bytes / 1048576).toFixed(1) + ' MB',
          p.tasks_done, p.tasks_failed, p.panics, Math.round(p.uptime_secs) + ' s'];
      for (const c of cells) { const td = document.createElement('td'); td.textContent = c; tr.append(td); }
      return tr;
    });
    $('procs').tBodies[0].replaceChildren(...rows);
  } catch (e) {
    $('status-node').textContent = 'status unavailable: ' + e.message;
  }
}

connect();
loadGallery();
refreshStatus();
setInterval(refreshStatus, 2000);
