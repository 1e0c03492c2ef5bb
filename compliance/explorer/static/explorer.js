// pharmafl explorer: the only script. No dependencies, nothing fetched, no inline code (CSP).
//
// 1. On an entry page, re-checks the RFC 9162 inclusion proof in the browser from the data the
//    page holds (WebCrypto SHA-256): leaf = SHA-256(0x00 || entry hash || signature), folded with
//    the audit path (RFC 9162 section 2.1.3.2) must give the checkpoint's signed root.
// 2. On a static trail page, filters the page's rows by the text typed.
"use strict";

function hexToBytes(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(2 * i, 2), 16);
  return out;
}

function bytesToHex(bytes) {
  return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function sha256(prefix, ...parts) {
  const total = 1 + parts.reduce((n, p) => n + p.length, 0);
  const buf = new Uint8Array(total);
  buf[0] = prefix;
  let at = 1;
  for (const p of parts) { buf.set(p, at); at += p.length; }
  return new Uint8Array(await crypto.subtle.digest("SHA-256", buf));
}

async function verifyInclusion(index, size, leaf, path, root) {
  if (index >= size) return false;
  let fn = index, sn = size - 1, r = leaf;
  for (const p of path) {
    if (sn === 0) return false;
    if (fn % 2 === 1 || fn === sn) {
      r = await sha256(1, p, r);
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
      }
    } else {
      r = await sha256(1, r, p);
    }
    fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
  }
  return sn === 0 && bytesToHex(r) === bytesToHex(root);
}

async function checkProof() {
  const data = document.getElementById("proof-data");
  const out = document.getElementById("browser-check");
  if (!data || !out) return;
  const p = JSON.parse(data.textContent);
  if (!(window.crypto && crypto.subtle)) {
    out.className = "pending";
    out.textContent = "this browser offers no WebCrypto here: the proof was checked by the explorer only";
    return;
  }
  const leaf = await sha256(0, hexToBytes(p.leaf_input));
  const ok = await verifyInclusion(p.index, p.tree_size, leaf, p.path.map(hexToBytes), hexToBytes(p.root));
  out.className = ok ? "ok" : "bad";
  out.textContent = ok
    ? `your browser recomputed the leaf hash ${bytesToHex(leaf).slice(0, 16)}… and folded the ${p.path.length} path hashes into the signed root: inclusion proved`
    : "your browser could NOT reproduce the signed root from this entry and its audit path: the proof fails";
  out.dataset.result = ok ? "ok" : "fail";
}

function rowFilter() {
  const box = document.getElementById("row-filter");
  if (!box) return;
  box.addEventListener("input", () => {
    const q = box.value.toLowerCase();
    for (const tr of document.querySelectorAll("#trail tbody tr")) {
      tr.hidden = q !== "" && !tr.textContent.toLowerCase().includes(q);
    }
  });
}

document.addEventListener("DOMContentLoaded", () => { checkProof(); rowFilter(); });
