// Samverkan auditor console: the checks that run in the auditor's own
// browser, with Web Crypto's SHA-256 and Ed25519 only. They follow
// docs/PROTOCOL.md: 13.8.1 (entry encoding and leaf hash), 13.8.4 (policy
// version), 13.9 (checkpoints, inclusion and consistency proofs, RFC 9162),
// 13.10 (evidence bundles) and 4 and 13.4 (the publisher's signing input).
'use strict';
(function () {
  const sv = document.documentElement.lang !== 'en';
  const T = (s, e) => (sv ? s : e);
  const enc = new TextEncoder();

  class CheckError extends Error {}
  const fail = (msg) => { throw new CheckError(msg); };

  // ---- bytes -----------------------------------------------------------
  function concat(parts) {
    let n = 0;
    for (const p of parts) n += p.length;
    const out = new Uint8Array(n);
    let o = 0;
    for (const p of parts) { out.set(p, o); o += p.length; }
    return out;
  }
  function u32(n) { const b = new Uint8Array(4); new DataView(b.buffer).setUint32(0, n); return b; }
  function u16(n) { const b = new Uint8Array(2); new DataView(b.buffer).setUint16(0, n); return b; }
  function i64(n) { const b = new Uint8Array(8); new DataView(b.buffer).setBigInt64(0, BigInt(n)); return b; }
  function u64(n) { const b = new Uint8Array(8); new DataView(b.buffer).setBigUint64(0, BigInt(n)); return b; }
  function str(s) { const e = enc.encode(s); return concat([u32(e.length), e]); }
  function opt(s) { return s === null ? Uint8Array.of(0) : concat([Uint8Array.of(1), str(s)]); }
  function list(a) { return concat([u32(a.length), ...a.map(str)]); }
  function hex(b) { return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join(''); }
  function unhex(h) {
    if (!/^[0-9a-f]{64}$/.test(h)) fail(T('en bevishash är inte 64 små hexsiffror', 'a proof hash is not 64 lowercase hex digits'));
    return Uint8Array.from(h.match(/../g), (x) => parseInt(x, 16));
  }
  function b64(s) {
    const bin = atob(s);
    return Uint8Array.from(bin, (c) => c.charCodeAt(0));
  }
  function b64url(s) {
    if (!/^[A-Za-z0-9_-]*$/.test(s)) fail(T('ogiltig base64url', 'invalid base64url'));
    const std = s.replace(/-/g, '+').replace(/_/g, '/');
    return b64(std + '='.repeat((4 - (std.length % 4)) % 4));
  }
  function toB64url(b) {
    return btoa(String.fromCharCode(...b)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }
  function equal(a, b) {
    if (a.length !== b.length) return false;
    let d = 0;
    for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
    return d === 0;
  }
  async function sha256(b) { return new Uint8Array(await crypto.subtle.digest('SHA-256', b)); }
  async function node(l, r) { return sha256(concat([Uint8Array.of(1), l, r])); }
  async function ed25519(publicKey, signature, message) {
    const key = await crypto.subtle.importKey('raw', publicKey, { name: 'Ed25519' }, false, ['verify']);
    return crypto.subtle.verify({ name: 'Ed25519' }, key, signature, message);
  }

  // ---- times and numbers -------------------------------------------------
  const fmtTime = (ms) => new Intl.DateTimeFormat(sv ? 'sv-SE' : 'en-GB', {
    timeZone: 'Europe/Stockholm', year: 'numeric', month: '2-digit', day: '2-digit',
    hour: '2-digit', minute: '2-digit', second: '2-digit', timeZoneName: 'short',
  }).format(new Date(ms));
  const fmtNum = (n) => new Intl.NumberFormat(sv ? 'sv-SE' : 'en-GB').format(n);

  // ---- 13.8.1: the entry and its leaf hash -------------------------------
  const ENTRY_MEMBERS = ['index', 'kind', 'at_ms', 'alert_id', 'publisher', 'recipient', 'topic',
    'alert_type', 'rule_id', 'legal_basis', 'purpose', 'fields', 'disclosed_digest', 'envelope_hash',
    'signature', 'policy_version', 'share_id', 'reason_code', 'reason', 'subject_hashes'];
  async function leafHash(e) {
    const entry = concat([
      str('samverkan/v1/audit-entry'), u64(e.index), str(e.kind), i64(e.at_ms),
      opt(e.alert_id), opt(e.publisher), opt(e.recipient), opt(e.topic), opt(e.alert_type),
      opt(e.rule_id), opt(e.legal_basis), opt(e.purpose), list(e.fields),
      opt(e.disclosed_digest), opt(e.envelope_hash), opt(e.signature), opt(e.policy_version),
      opt(e.share_id), opt(e.reason_code), opt(e.reason), list(e.subject_hashes),
    ]);
    return sha256(concat([Uint8Array.of(0), entry]));
  }

  // ---- 13.9.2 and 13.9.3: checkpoints --------------------------------------
  async function checkCheckpoint(note, brokerKeys, exact) {
    const split = note.indexOf('\n\n');
    if (split < 0) fail(T('kontrollpunkten saknar signaturdel', 'the checkpoint has no signature part'));
    const text = note.slice(0, split + 1);
    const lines = text.slice(0, -1).split('\n');
    if (lines.length < 4) fail(T('kontrollpunkten är ofullständig', 'the checkpoint is incomplete'));
    const [origin, sizeText, rootText, ...extensions] = lines;
    if (!/^(0|[1-9][0-9]*)$/.test(sizeText)) fail(T('ogiltig storlek i kontrollpunkten', 'invalid size in the checkpoint'));
    const size = BigInt(sizeText);
    const root = b64(rootText);
    if (root.length !== 32 || btoa(String.fromCharCode(...root)) !== rootText) fail(T('ogiltig rot i kontrollpunkten', 'invalid root in the checkpoint'));
    let time = null;
    let prev = null;
    for (const x of extensions) {
      const m = /^(time|prev) (0|[1-9][0-9]*)$/.exec(x);
      if (!m) fail(T('okänd rad i kontrollpunkten: ', 'unknown line in the checkpoint: ') + x);
      if (m[1] === 'time' && time === null) time = Number(m[2]);
      else if (m[1] === 'prev' && prev === null && time !== null) prev = m[2];
      else fail(T('oväntad rad i kontrollpunkten: ', 'unexpected line in the checkpoint: ') + x);
    }
    if (time === null) fail(T('kontrollpunkten saknar tid', 'the checkpoint has no time'));
    const sigLines = note.slice(split + 2).split('\n');
    if (sigLines.pop() !== '') fail(T('signaturraden slutar inte med radbrytning', 'the signature line does not end with a line feed'));
    if (exact && sigLines.length !== 1) fail(T('beviset ska ha exakt en signaturrad', 'a bundle must carry exactly one signature line'));
    if (origin !== brokerKeys.origin) fail(T('kontrollpunkten gäller en annan logg: ', 'the checkpoint is of another log: ') + origin);
    for (const line of sigLines) {
      const m = /^\u2014 (\S+) ([A-Za-z0-9+/=]+)$/.exec(line);
      if (!m) fail(T('felaktig signaturrad', 'malformed signature line'));
      if (m[1] !== origin) continue;
      const sig = b64(m[2]);
      if (sig.length !== 68) fail(T('felaktig signaturlängd', 'wrong signature length'));
      for (const k of brokerKeys.keys) {
        const pub = b64(k.public_key);
        const idHash = await sha256(concat([enc.encode(origin), Uint8Array.of(0x0a, 0x01), pub]));
        if (!equal(idHash.slice(0, 4), sig.slice(0, 4))) continue;
        if (!(await ed25519(pub, sig.slice(4), enc.encode(text)))) fail(T('brokerns signatur över kontrollpunkten stämmer inte', "the broker's signature over the checkpoint does not verify"));
        if (k.not_before_ms !== null && time < k.not_before_ms) fail(T('nyckeln var inte giltig än', 'the key was not yet valid'));
        if (k.not_after_ms !== null && time >= k.not_after_ms) fail(T('nyckeln hade gått ut', 'the key had expired'));
        if (k.revoked_at_ms !== null && time >= k.revoked_at_ms) fail(T('nyckeln var spärrad', 'the key was revoked'));
        return { size, root, time, key: k.id };
      }
    }
    return fail(T('ingen av brokerns nycklar har signerat kontrollpunkten', 'no broker key signed the checkpoint'));
  }

  // ---- RFC 9162 2.1.3.2: inclusion -------------------------------------------
  async function verifyInclusion(index, size, leaf, path, root) {
    if (index >= size) fail(T('posten ligger utanför trädet', 'the entry is outside the tree'));
    let fn = index;
    let sn = size - 1n;
    let r = leaf;
    for (const p of path) {
      if (sn === 0n) fail(T('inkluderingsbeviset är för långt', 'the inclusion proof is too long'));
      if ((fn & 1n) === 1n || fn === sn) {
        r = await node(p, r);
        while ((fn & 1n) === 0n && fn !== 0n) { fn >>= 1n; sn >>= 1n; }
      } else {
        r = await node(r, p);
      }
      fn >>= 1n; sn >>= 1n;
    }
    if (sn !== 0n || !equal(r, root)) fail(T('inkluderingsbeviset leder inte till den signerade roten', 'the inclusion proof does not lead to the signed root'));
  }

  // ---- RFC 9162 2.1.4.2: consistency ---------------------------------------
  async function verifyConsistency(first, second, path, firstHash, secondHash) {
    if (first > second) fail(T('den gamla trädstorleken är större än den nya', 'the old tree is larger than the new one'));
    if (first === second) {
      if (path.length !== 0 || !equal(firstHash, secondHash)) fail(T('samma storlek men olika rötter', 'same size but different roots'));
      return;
    }
    if (first === 0n) { if (path.length !== 0) fail(T('onödigt bevis', 'unexpected proof')); return; }
    if (path.length === 0) fail(T('beviset saknas', 'the proof is missing'));
    let p = path;
    if ((first & (first - 1n)) === 0n) p = [firstHash, ...path];
    let fn = first - 1n;
    let sn = second - 1n;
    while ((fn & 1n) === 1n) { fn >>= 1n; sn >>= 1n; }
    let fr = p[0];
    let sr = p[0];
    for (const c of p.slice(1)) {
      if (sn === 0n) fail(T('konsistensbeviset är för långt', 'the consistency proof is too long'));
      if ((fn & 1n) === 1n || fn === sn) {
        fr = await node(c, fr);
        sr = await node(c, sr);
        while ((fn & 1n) === 0n && fn !== 0n) { fn >>= 1n; sn >>= 1n; }
      } else {
        sr = await node(sr, c);
      }
      fn >>= 1n; sn >>= 1n;
    }
    if (sn !== 0n || !equal(fr, firstHash) || !equal(sr, secondHash)) fail(T('loggen är INTE en förlängning av er kontrollpunkt', 'the log is NOT an extension of your checkpoint'));
  }

  // ---- 13.8.4: policy version ------------------------------------------------
  async function policyVersion(files) {
    const parts = [str('samverkan/v1/policy-version'), u32(files.length)];
    for (const f of files) parts.push(str(f.path), str(f.text));
    return 'sha256:' + hex(await sha256(concat(parts)));
  }

  // keys.toml ([[key]] tables of simple `name = value` lines, section 11.2)
  function parseKeys(text) {
    const keys = [];
    let cur = null;
    for (const raw of text.split('\n')) {
      const line = raw.trim();
      if (line === '' || line.startsWith('#')) continue;
      if (line === '[[key]]') { cur = {}; keys.push(cur); continue; }
      const m = /^([a-z_]+)\s*=\s*(.+)$/.exec(line);
      if (!m || !cur) continue;
      let v = m[2].trim();
      if (v.startsWith('"')) v = JSON.parse(v);
      else v = Date.parse(v);
      cur[m[1]] = v;
    }
    return keys;
  }

  // ---- section 4: the publisher's signing input --------------------------------
  function signingInput(h, digests) {
    const parts = [str('samverkan/v1/envelope'), u16(h.version), str(h.alert_id), str(h.publisher),
      str(h.key_id), str(h.alert_type), str(h.topic), i64(h.issued_at_ms)];
    if (h.to === undefined || h.to === null) parts.push(Uint8Array.of(0));
    else parts.push(Uint8Array.of(1), u32(h.to.length), ...h.to.map(str));
    parts.push(u32(digests.length), ...digests);
    return concat(parts);
  }

  function block(text, table, id) {
    const header = '[[' + table + ']]';
    const blocks = [];
    for (const line of text.split('\n')) {
      if (line.trim() === header || blocks.length === 0) blocks.push('');
      blocks[blocks.length - 1] += line + '\n';
    }
    return blocks.find((b) => b.trimStart().startsWith(header) && b.split('\n').some((l) => l.trim() === 'id = "' + id + '"')) || null;
  }

  // ---- 13.10.2: the whole bundle -----------------------------------------------
  async function checkBundle(text, brokerKeys) {
    let b;
    try { b = JSON.parse(text); } catch (e) { fail(T('inte JSON: ', 'not JSON: ') + e.message); }
    const same = (a, want) => a.length === want.length && a.every((x, i) => x === want[i]);
    if (typeof b !== 'object' || b === null || !same(Object.keys(b), ['format', 'entry', 'checkpoint', 'inclusion_proof', 'envelope', 'policy_files'])) fail(T('fel medlemmar i beviset', 'wrong members in the bundle'));
    if (!same(Object.keys(b.entry), ENTRY_MEMBERS)) fail(T('fel fält i posten', 'wrong fields in the entry'));
    if (JSON.stringify(b, null, 2) + '\n' !== text) fail(T('beviset är inte i kanonisk form (något har ändrats)', 'the bundle is not in canonical form (something was changed)'));
    if (b.format !== 'samverkan-evidence/v1') fail(T('okänt format: ', 'unknown format: ') + b.format);
    const paths = b.policy_files.map((f) => f.path);
    for (let i = 1; i < paths.length; i++) if (!(paths[i - 1] < paths[i])) fail(T('policyfilerna är inte sorterade', 'the policy files are not sorted'));
    const cp = await checkCheckpoint(b.checkpoint, brokerKeys, true);
    const e = b.entry;
    const leaf = await leafHash(e);
    await verifyInclusion(BigInt(e.index), cp.size, leaf, b.inclusion_proof.map(unhex), cp.root);
    if ((await policyVersion(b.policy_files)) !== e.policy_version) fail(T('policyfilerna har inte postens policyversion', "the policy files do not have the entry's policy version"));
    let publisherChecked = false;
    if (e.kind === 'share' || e.kind === 'denial') {
      const env = b.envelope;
      if (!env || env.disclosures.length !== 0) fail(T('det signerade larmet saknas', 'the signed alert is missing'));
      const h = env.header;
      const digests = env.digests.map(b64url);
      if (digests.some((d) => d.length !== 32)) fail(T('felaktig sammanfattning', 'malformed digest'));
      const input = signingInput(h, digests);
      if (hex(await sha256(input)) !== e.envelope_hash) fail(T('larmets hash stämmer inte med posten', "the alert's hash does not match the entry"));
      if (h.alert_id !== e.alert_id || h.publisher !== e.publisher || env.signature !== e.signature) fail(T('larmet stämmer inte med posten', 'the alert does not match the entry'));
      const keysFile = b.policy_files.find((f) => f.path === 'keys.toml');
      if (!keysFile) fail(T('keys.toml saknas', 'keys.toml is missing'));
      const key = parseKeys(keysFile.text).find((k) => k.owner === h.publisher && k.id === h.key_id);
      if (!key) fail(T('avsändarens nyckel finns inte i keys.toml', "the publisher's key is not in keys.toml"));
      const at = h.issued_at_ms;
      if ((key.not_before !== undefined && at < key.not_before) || (key.not_after !== undefined && at >= key.not_after) || (key.revoked_at !== undefined && at >= key.revoked_at)) fail(T('avsändarens nyckel var inte giltig när larmet signerades', "the publisher's key was not valid when the alert was signed"));
      const sig = b64url(env.signature);
      if (sig.length !== 64 || !(await ed25519(b64(key.public_key), sig, input))) fail(T('avsändarens signatur över larmet stämmer inte', "the publisher's signature over the alert does not verify"));
      if (toB64url(sig) !== env.signature) fail(T('signaturen är inte kanonisk', 'the signature is not canonical'));
      publisherChecked = true;
    }
    let ruleText = null;
    let basisText = null;
    if (e.kind === 'share') {
      ruleText = b.policy_files.filter((f) => f.path.startsWith('rules/')).map((f) => block(f.text, 'rule', e.rule_id)).find((x) => x) || null;
      const lb = b.policy_files.find((f) => f.path === 'legal-bases.toml');
      basisText = lb ? block(lb.text, 'legal_basis', e.legal_basis) : null;
      if (!ruleText || !basisText) fail(T('regeln eller den rättsliga grunden saknas i policyn', 'the rule or the legal basis is missing from the policy'));
    }
    return { e, cp, publisherChecked, ruleText, basisText };
  }

  function show(el, ok, lines) {
    el.className = ok ? 'ok' : 'fail';
    el.textContent = lines.join('\n');
  }

  function brokerKeys() {
    const el = document.getElementById('broker-keys');
    return JSON.parse(el.textContent);
  }

  async function runBundle(text) {
    const out = document.getElementById('verify-result');
    out.className = '';
    out.textContent = T('Kontrollerar…', 'Checking…');
    try {
      const r = await checkBundle(text, brokerKeys());
      const lines = [
        T('Verifierat: post ', 'Verified: entry ') + r.e.index + T(' finns i loggen med ', ' is in the log of ') + fmtNum(r.cp.size) +
          T(' poster, signerad ', ' entries signed at ') + fmtTime(r.cp.time) + T(' av brokernyckeln ', ' by broker key ') + r.cp.key + '.',
      ];
      if (r.publisherChecked) lines.push(T('Avsändarens (', '') + r.e.publisher + T(') signatur över larmet verifierad.', "'s signature over the alert verified."));
      lines.push(T('Policyversionen ', 'Policy version ') + r.e.policy_version.slice(0, 19) + T('… stämmer med de medföljande policyfilerna.', '… matches the policy files carried.'));
      if (r.ruleText) lines.push('', r.ruleText.trim(), '', r.basisText.trim());
      show(out, true, lines);
    } catch (err) {
      show(out, false, [T('INTE verifierat: ', 'NOT verified: ') + (err instanceof CheckError ? err.message : String(err))]);
    }
  }

  async function runConsistency() {
    const out = document.getElementById('consistency-result');
    try {
      const data = JSON.parse(document.getElementById('consistency').textContent);
      const keys = brokerKeys();
      const older = await checkCheckpoint(data.old, keys, false);
      const newer = await checkCheckpoint(data.new, keys, false);
      await verifyConsistency(older.size, newer.size, data.proof.map(unhex), older.root, newer.root);
      show(out, true, [
        T('Verifierat: loggen har bara byggts på sedan er kontrollpunkt (', 'Verified: the log has only been appended to since your checkpoint (') +
          fmtNum(older.size) + T(' poster, ', ' entries, ') + fmtTime(older.time) + ').',
        T('Dagens logg: ', "Today's log: ") + fmtNum(newer.size) + T(' poster, signerad ', ' entries, signed ') + fmtTime(newer.time) + T(' av ', ' by ') + newer.key + '.',
      ]);
    } catch (err) {
      show(out, false, [T('INTE verifierat: ', 'NOT verified: ') + (err instanceof CheckError ? err.message : String(err))]);
    }
  }

  function loadFileInto(input, textarea) {
    input.addEventListener('change', async () => {
      const f = input.files && input.files[0];
      if (f) textarea.value = await f.text();
    });
  }

  document.addEventListener('DOMContentLoaded', () => {
    const button = document.getElementById('verify');
    if (button) {
      button.addEventListener('click', async () => {
        const out = document.getElementById('verify-result');
        try {
          const res = await fetch('/entry/' + button.dataset.index + '/evidence.json', { credentials: 'same-origin' });
          if (!res.ok) throw new CheckError(T('beviset kunde inte hämtas: ', 'the evidence could not be fetched: ') + res.status);
          await runBundle(await res.text());
        } catch (err) {
          show(out, false, [T('INTE verifierat: ', 'NOT verified: ') + err.message]);
        }
      });
    }
    const pasted = document.getElementById('verify-pasted');
    if (pasted) {
      loadFileInto(document.getElementById('bundle-file'), document.getElementById('bundle-text'));
      pasted.addEventListener('click', () => runBundle(document.getElementById('bundle-text').value));
    }
    const cpFile = document.getElementById('checkpoint-file');
    if (cpFile) loadFileInto(cpFile, document.getElementById('checkpoint-text'));
    if (document.getElementById('consistency')) runConsistency();
  });
}());
