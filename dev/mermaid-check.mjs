// dev/mermaid-check.mjs FILE: parse a Mermaid diagram with mermaid-js itself (in jsdom, as a
// browser would) and print {"nodes": [[id, label]], "edges": [[from, to, text]]}, labels
// decoded the way Mermaid renders them. Exit 1 on a parse error. MERMAID_DIR holds the
// node_modules with mermaid and jsdom (dev/check-api installs them).
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const dir = process.env.MERMAID_DIR;
const mod = (p) => import(pathToFileURL(path.join(dir, 'node_modules', p)).href);
const { JSDOM } = await mod('jsdom/lib/api.js');
const dom = new JSDOM('<!doctype html><html><body></body></html>', { pretendToBeVisual: true });
globalThis.window = dom.window;
globalThis.document = dom.window.document;
globalThis.DOMParser = dom.window.DOMParser;
const mermaid = (await mod('mermaid/dist/mermaid.core.mjs')).default;
mermaid.initialize({ startOnLoad: false, securityLevel: 'strict' });

const text = fs.readFileSync(process.argv[2], 'utf8');
await mermaid.parse(text); // throws on a syntax error
const diagram = await mermaid.mermaidAPI.getDiagramFromText(text);
// Mermaid keeps `#NN;` codes as placeholders and turns them into HTML entities when it
// renders; the browser then decodes them. Do the same.
const decode = (s) => {
  const html = s.replace(/ﬂ°°/g, '&#').replace(/ﬂ°/g, '&').replace(/¶ß/g, ';');
  const t = dom.window.document.createElement('textarea');
  t.innerHTML = html;
  return t.value;
};
const nodes = [...diagram.db.getVertices()].map(([id, v]) => [id, decode(v.text)]);
const edges = diagram.db.getEdges().map((e) => [e.start, e.end, e.text]);
console.log(JSON.stringify({ nodes, edges }));
