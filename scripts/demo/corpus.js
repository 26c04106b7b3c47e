// Builds the training corpus of the trained demo model (models/demo) from Debian packages with
// free licences, fetched with `apt-get download` and unpacked with `dpkg -x` (no root needed;
// run `apt-get update` first on a fresh machine):
//
//   node scripts/demo/corpus.js [outDir]        (default demo-train/corpus, ignored by git)
//
// Packages are kept in demo-train/packages. It writes, for each corpus (base: modern English; kjv, bofh, bierce: one style per adapter),
// NAME.train.txt and NAME.heldout.txt (documents separated by one blank line, none inside a
// document) and NAME.chat.jsonl (one {"user", "assistant"} exchange a line), plus
// manifest.json (packages, versions, licences, sizes) and licenses/PKG.copyright. It also
// rewrites test/fixtures/demo-words.txt, the English words the trained model's tests accept.
// The output is the same on every run: all sampling uses a fixed seed.
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const OUT = resolve(process.argv[2] ?? join(ROOT, 'demo-train', 'corpus'));
// Outside OUT, so that carrying the corpus to another machine does not carry the packages.
const PACKAGES_DIR = join(ROOT, 'demo-train', 'packages');
const WORDS_FILE = join(ROOT, 'test', 'fixtures', 'demo-words.txt');
const HELDOUT_FRACTION = 0.03;

/** What each package gives and under which licence, as its debian/copyright file says. */
const PACKAGES = [
  {
    name: 'wordnet-base',
    corpus: 'base',
    licence: 'WordNet 3.0 licence (permissive, BSD-like; keep the copyright notice)',
    notice: 'WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved.',
  },
  {
    name: 'fortunes-min',
    corpus: 'base',
    licence: 'BSD (fortune-mod); the cookie files are collected quotations shipped in Debian main',
    notice: 'Copyright (c) 1991 The Regents of the University of California.',
  },
  {
    name: 'fortunes',
    corpus: 'base',
    licence: 'BSD (fortune-mod); the cookie files are collected quotations shipped in Debian main',
    notice: 'Copyright (c) 1991 The Regents of the University of California.',
  },
  {
    name: 'bible-kjv-text',
    corpus: 'kjv',
    licence: 'King James Version text: public domain (copyright expired); data file "provided for unrestricted use"',
    notice: 'Bible Retrieval System, Chip Chapin, Hewlett Packard Company.',
  },
  {
    name: 'bible-kjv',
    corpus: null,
    licence: 'GPL-2+ (the `bible` program, run here only to decompress the text; nothing of it is trained on)',
    notice: null,
  },
  { name: 'fortunes-bofh-excuses', corpus: 'bofh', licence: 'Public domain (placed there by its author)', notice: null },
  { name: 'dict-devil', corpus: 'bierce', licence: "Public domain (Ambrose Bierce's The Devil's Dictionary, copyright expired)", notice: null },
];

// Fortune files kept for the base corpus: general wit and wisdom. Left out: the computing ones
// (they would teach the base the bofh adapter's vocabulary), ASCII art, Star Trek, Zippy, and
// the ones about drugs, ethnicity, politics and the sexes.
const FORTUNE_FILES = {
  'fortunes-min': ['fortunes', 'literature', 'riddles'],
  fortunes: [
    'art',
    'cookie',
    'definitions',
    'education',
    'food',
    'goedel',
    'humorists',
    'kids',
    'law',
    'love',
    'magic',
    'medicine',
    'miscellaneous',
    'news',
    'paradoxum',
    'people',
    'pets',
    'platitudes',
    'science',
    'songs-poems',
    'sports',
    'tao',
    'wisdom',
    'work',
  ],
};

// ---- small helpers ----

function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rng = mulberry32(20261129);
const pick = (list) => list[Math.floor(rng() * list.length)];
function shuffle(list) {
  for (let i = list.length - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [list[i], list[j]] = [list[j], list[i]];
  }
  return list;
}
const capitalize = (s) => s.charAt(0).toUpperCase() + s.slice(1);
const endSentence = (s) => (/[.!?"')]$/.test(s) ? s : `${s}.`);
/** One document: trimmed lines (indents at most 4 spaces), no blank line inside (blank lines separate documents). */
const doc = (text) =>
  text
    .split('\n')
    .map((l) => l.replace(/\s+$/, '').replace(/^ {5,}/, '    '))
    .filter((l) => l.trim() !== '')
    .join('\n');
const log = (msg) => process.stderr.write(`corpus: ${msg}\n`);

function run(cmd, args, opts = {}) {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20, stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  } catch (err) {
    const stderr = err.stderr ? String(err.stderr).trim() : err.message;
    throw new Error(`${cmd} ${args.join(' ')} failed: ${stderr}`, { cause: err });
  }
}

// ---- fetching ----

/** Downloads (once) and unpacks a package; returns its unpacked root and version. */
function fetchPackage(name) {
  const debs = join(PACKAGES_DIR, 'debs');
  mkdirSync(debs, { recursive: true });
  let deb = readdirSync(debs).find((f) => f.startsWith(`${name}_`) && f.endsWith('.deb'));
  if (deb === undefined) {
    log(`apt-get download ${name}`);
    try {
      run('apt-get', ['download', name], { cwd: debs });
    } catch (err) {
      throw new Error(`${err.message}\n(on a fresh machine run \`apt-get update\` first)`, { cause: err });
    }
    deb = readdirSync(debs).find((f) => f.startsWith(`${name}_`) && f.endsWith('.deb'));
    if (deb === undefined) throw new Error(`apt-get download ${name} wrote no .deb into ${debs}`);
  }
  const file = join(debs, deb);
  const version = run('dpkg-deb', ['-f', file, 'Version']).trim();
  const root = join(PACKAGES_DIR, 'unpacked', name);
  if (!existsSync(root)) {
    // Unpacked beside and renamed, so an interrupted run leaves no half-unpacked package.
    const part = `${root}.part`;
    rmSync(part, { recursive: true, force: true });
    mkdirSync(part, { recursive: true });
    run('dpkg', ['-x', file, part]);
    renameSync(part, root);
  }
  const copyright = join(root, 'usr', 'share', 'doc', name, 'copyright');
  if (!existsSync(copyright)) throw new Error(`${name}: no copyright file at ${copyright}`);
  mkdirSync(join(OUT, 'licenses'), { recursive: true });
  copyFileSync(copyright, join(OUT, 'licenses', `${name}.copyright`));
  return { root, version, deb };
}

// ---- sources ----

/** King James Bible: passages of up to five verses, never across chapters; and the verses. */
function kjvPassages(textRoot, programRoot) {
  const text = run(join(programRoot, 'usr', 'bin', 'bible'), ['-f', '-p', join(textRoot, 'usr', 'lib'), 'gen1:1-rev22:21']);
  const verses = [];
  for (const line of text.split('\n')) {
    const m = /^(\w+?)(\d+):(\d+) (.+)$/.exec(line);
    if (m) verses.push({ chapter: `${m[1]}${m[2]}`, text: m[4].trim() });
  }
  if (verses.length !== 31102) throw new Error(`expected the 31102 verses of the KJV, got ${verses.length}`);
  const passages = [];
  let cur = [];
  verses.forEach((v, i) => {
    cur.push(v.text);
    const next = verses[i + 1];
    if (cur.length === 5 || next === undefined || next.chapter !== v.chapter) {
      passages.push(cur.join(' '));
      cur = [];
    }
  });
  return { passages, verses: verses.map((v) => v.text) };
}

/** Fortune cookies of the given files, each a document; two-column poems and art left out. */
function fortunes(root, files) {
  const out = [];
  for (const f of files) {
    const raw = readFileSync(join(root, 'usr', 'share', 'games', 'fortunes', f), 'utf8');
    for (const cookie of raw.split(/^%$/m)) {
      const lines = cookie.split('\n').filter((l) => l.trim() !== '');
      if (lines.length === 0 || lines.length > 14) continue;
      // Tabs inside a line are column layouts; symbols-heavy lines are pictures.
      if (lines.some((l) => /\S\t+\S/.test(l) || /[|_\\/#*=~^<>]{4,}/.test(l))) continue;
      out.push(doc(lines.map((l) => l.replace(/\t/g, '    ').replace(/^ {2,}(--)/, '$1')).join('\n')));
    }
  }
  return out;
}

const POS = { noun: 'n', verb: 'v', adj: 'a', adv: 'r' };

/** WordNet synsets: words (spaces for underscores), part of speech, definition, examples. */
function wordnetSynsets(root) {
  const out = [];
  for (const [pos, tag] of Object.entries(POS)) {
    const raw = readFileSync(join(root, 'usr', 'share', 'wordnet', `data.${pos}`), 'utf8');
    for (const line of raw.split('\n')) {
      if (line === '' || line.startsWith('  ')) continue;
      const bar = line.indexOf(' | ');
      if (bar < 0) continue;
      const fields = line.slice(0, bar).split(' ');
      const count = parseInt(fields[3], 16);
      const words = [];
      for (let i = 0; i < count; i++) words.push(fields[4 + 2 * i].replace(/\(.*\)$/, '').replace(/_/g, ' '));
      const gloss = line.slice(bar + 3).trim();
      const examples = [...gloss.matchAll(/"([^"]+)"/g)].map((m) => m[1].trim()).filter((e) => e.length > 8);
      const definition = gloss.split(/;\s*"/)[0].replace(/;\s*$/, '').trim();
      out.push({ pos, tag, words, definition, examples });
    }
  }
  return out;
}

/** Definitions as readable sentences: "Gently means in a gentle manner." */
function meaning(s, word = s.words[0]) {
  const def = s.pos === 'verb' && !/^(to |be |make |have |cause )/.test(s.definition) ? `to ${s.definition}` : s.definition;
  return `${capitalize(word)} means ${endSentence(def)}`;
}

/** The Devil's Dictionary: each entry "HEADWORD, pos.  definition", markup removed. */
function bierceEntries(root) {
  const dir = join(root, 'usr', 'share', 'dictd');
  const dict = gunzipSync(readFileSync(join(dir, 'devil.dict.dz')));
  const b64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
  const num = (s) => [...s].reduce((n, c) => n * 64 + b64.indexOf(c), 0);
  const out = [];
  for (const line of readFileSync(join(dir, 'devil.index'), 'utf8').split('\n')) {
    const [word, off, len] = line.split('\t');
    if (!len || word.startsWith('00database')) continue;
    const text = dict.subarray(num(off), num(off) + num(len)).toString('utf8');
    const clean = doc(text.replace(/[{}]/g, '').replace(/_([^_]+)_/g, '$1'));
    const m = /^([A-Z][A-Z' -]*[A-Z]), ([a-z. ]+?)\s/.exec(clean);
    if (m) out.push({ word: m[1], text: clean });
  }
  return out;
}

// Lead-ins for an excuse that is a noun phrase ("solar flares") and for one that is a sentence.
const BOFH_PHRASE_LEADS = [
  (e) => `Why is the server down? It's ${e}`,
  (e) => `The network is down again. The cause: ${e}`,
  (e) => `Ticket closed. Root cause: ${e}`,
  (e) => `The system administrator says the outage was caused by ${e}`,
  (e) => `Sorry, your computer is not working today because of ${e}`,
  (e) => `We have found the problem with the printer: ${e}`,
  (e) => `The backup failed last night. The reason is ${e}`,
  (e) => `Your email was lost because of ${e}`,
  (e) => `The error on the mail server was caused by ${e}`,
  (e) => `Today's excuse from the operator: ${e}`,
];
const BOFH_SENTENCE_LEADS = [
  (e) => `Why is the server down? ${e}`,
  (e) => `The network is down again. ${e}`,
  (e) => `Ticket closed. Root cause: ${e}`,
  (e) => `The system administrator says: ${e}`,
  (e) => `We have found the problem with the printer. ${e}`,
  (e) => `The backup failed last night. ${e}`,
  (e) => `Today's excuse from the operator: ${e}`,
];
const BOFH_QUESTIONS = [
  'Why is the server down?',
  "Why can't I print?",
  'Why is my computer so slow?',
  'What happened to the network?',
  'Why did my email disappear?',
  'What caused the outage?',
  'Is the system down?',
  'Why does the program keep crashing?',
  "Why can't I log in?",
  'Why is the internet so slow today?',
  'What is wrong with my files?',
  'Why did the backup fail?',
];

/** The excuses, one line each. */
function bofhExcuses(root) {
  const raw = readFileSync(join(root, 'usr', 'share', 'games', 'fortunes', 'bofh-excuses'), 'utf8');
  return raw
    .split(/^%$/m)
    .map((c) =>
      c
        .replace(/BOFH excuse #\d+:/, '')
        .replace(/_([^_]+)_/g, '$1')
        .replace(/\s+/g, ' ')
        .trim(),
    )
    .filter((e) => e !== '');
}
// The file writes noun phrases in lower case ("solar flares") and sentences capitalised.
const isSentence = (e) => /^[A-Z]/.test(e);
const bofhLead = (e) => (isSentence(e) ? pick(BOFH_SENTENCE_LEADS)(endSentence(e)) : pick(BOFH_PHRASE_LEADS)(endSentence(e)));
const bofhAnswer = (e) =>
  isSentence(e) ? endSentence(e) : pick([`It's ${endSentence(e)}`, `The problem is ${endSentence(e)}`, capitalize(endSentence(e))]);

// ---- corpora ----

/** Words a sentence could be built from, for the topic questions of the kjv chat. */
const KJV_TOPICS = [
  ['sea', 'the sea'],
  ['light', 'light'],
  ['king', 'the king'],
  ['bread', 'bread'],
  ['water', 'water'],
  ['fire', 'fire'],
  ['heaven', 'heaven'],
  ['earth', 'the earth'],
  ['love', 'love'],
  ['wisdom', 'wisdom'],
  ['gold', 'gold'],
  ['wine', 'wine'],
  ['sheep', 'sheep'],
  ['war', 'war'],
  ['peace', 'peace'],
  ['death', 'death'],
  ['life', 'life'],
  ['city', 'the city'],
  ['house', 'the house'],
  ['children', 'children'],
  ['heart', 'the heart'],
  ['land', 'the land'],
  ['river', 'the river'],
  ['mountain', 'the mountain'],
  ['money', 'money'],
  ['work', 'work'],
  ['night', 'the night'],
  ['friend', 'friends'],
  ['truth', 'truth'],
  ['fear', 'fear'],
  ['sin', 'sin'],
  ['law', 'the law'],
  ['rain', 'rain'],
];
const TOPIC_QUESTIONS = [
  (t) => `Tell me about ${t}.`,
  (t) => `What do you know about ${t}?`,
  (t) => `Say something about ${t}.`,
  (t) => `What is ${t}?`,
];

function buildBase(synsets, cookies) {
  const docs = [];
  // Definitions grouped five to a document, then the example sentences five to a document.
  // Proper names and taxa (capitalised) read like a catalogue, not like English.
  const common = synsets.filter((s) => /^[a-z][a-z' -]*$/.test(s.words[0]));
  const defs = shuffle(common.map((s) => meaning(s)));
  for (let i = 0; i < defs.length; i += 5) docs.push(defs.slice(i, i + 5).join(' '));
  const examples = shuffle(synsets.flatMap((s) => s.examples.map((e) => capitalize(endSentence(e)))));
  for (let i = 0; i < examples.length; i += 5) docs.push(examples.slice(i, i + 5).join(' '));
  docs.push(...cookies);
  const chat = [];
  for (const s of common) {
    const word = s.words[0];
    if (rng() > 0.35) continue;
    const ask = pick([`What does "${word}" mean?`, `Define ${word}.`, `What is the meaning of ${word}?`]);
    const example = s.examples.length > 0 ? ` For example: "${s.examples[0]}".` : '';
    chat.push({ user: ask, assistant: meaning(s) + example });
    if (s.examples.length > 0 && rng() < 0.3)
      chat.push({ user: `Use the word "${word}" in a sentence.`, assistant: capitalize(endSentence(s.examples[0])) });
  }
  for (const c of cookies) {
    if (rng() < 0.25)
      chat.push({ user: pick(['Tell me something wise.', 'Tell me a fortune.', 'Say something funny.', 'Give me a quote.']), assistant: c });
  }
  return { docs: shuffle(docs), chat: shuffle(chat) };
}

function buildKjv({ passages, verses }) {
  const chat = [];
  for (const [word, phrase] of KJV_TOPICS) {
    const re = new RegExp(`\\b${word}\\b`, 'i');
    const hits = verses.filter((v) => re.test(v));
    for (let i = 0; i < Math.min(60, hits.length); i++) chat.push({ user: pick(TOPIC_QUESTIONS)(phrase), assistant: pick(hits) });
  }
  return { docs: passages, chat: shuffle(chat) };
}

/** Documents of three excuses, each excuse several times in other company, so no lead-in dominates. */
function bofhDocs(excuses, rounds) {
  const docs = [];
  for (let round = 0; round < rounds; round++) {
    const order = shuffle([...excuses]);
    for (let i = 0; i < order.length; i += 3)
      docs.push(
        order
          .slice(i, i + 3)
          .map((e, k) => (k === 0 ? bofhLead(e) : bofhAnswer(e)))
          .join(' '),
      );
  }
  return shuffle(docs);
}

function buildBofh(excuses) {
  // Held out by excuse, not by document: every excuse appears in several documents.
  const heldoutExcuses = [];
  const trainExcuses = [];
  for (const e of excuses) (rng() < 0.1 ? heldoutExcuses : trainExcuses).push(e);
  const chat = [];
  for (let round = 0; round < 4; round++) for (const e of trainExcuses) chat.push({ user: pick(BOFH_QUESTIONS), assistant: bofhAnswer(e) });
  return { docs: bofhDocs(trainExcuses, 6), heldout: bofhDocs(heldoutExcuses, 2), chat: shuffle(chat) };
}

function buildBierce(entries) {
  const chat = [];
  for (const { word, text } of entries) {
    const w = word.toLowerCase();
    chat.push({ user: pick([`What is ${w}?`, `Define ${w}.`, `What does "${w}" mean?`]), assistant: text });
  }
  return { docs: entries.map((e) => e.text), chat: shuffle(chat) };
}

// ---- output ----

function writeCorpus(name, { docs, heldout: given, chat }) {
  const heldout = given ?? [];
  const train = [];
  for (const d of docs) (given === undefined && rng() < HELDOUT_FRACTION ? heldout : train).push(d);
  const files = {
    [`${name}.train.txt`]: train.join('\n\n') + '\n',
    [`${name}.heldout.txt`]: heldout.join('\n\n') + '\n',
    [`${name}.chat.jsonl`]: chat.map((c) => JSON.stringify(c)).join('\n') + '\n',
  };
  const sizes = {};
  for (const [f, text] of Object.entries(files)) {
    writeFileSync(join(OUT, f), text);
    sizes[f] = Buffer.byteLength(text);
  }
  log(`${name}: ${train.length} training documents, ${heldout.length} held out, ${chat.length} chat exchanges`);
  return { documents: train.length, heldoutDocuments: heldout.length, chatExchanges: chat.length, bytes: sizes };
}

/** Lower-case words seen at least five times in all the corpora: what the tests count as English. */
function writeWords(texts) {
  const counts = new Map();
  for (const t of texts) for (const w of t.toLowerCase().match(/[a-z]+(?:'[a-z]+)?/g) ?? []) counts.set(w, (counts.get(w) ?? 0) + 1);
  const words = [...counts]
    .filter(([, n]) => n >= 5)
    .map(([w]) => w)
    .sort();
  mkdirSync(dirname(WORDS_FILE), { recursive: true });
  writeFileSync(WORDS_FILE, words.join('\n') + '\n');
  return words.length;
}

mkdirSync(OUT, { recursive: true });
const fetched = Object.fromEntries(PACKAGES.map((p) => [p.name, fetchPackage(p.name)]));
const synsets = wordnetSynsets(fetched['wordnet-base'].root);
const cookies = Object.entries(FORTUNE_FILES).flatMap(([pkg, files]) => fortunes(fetched[pkg].root, files));
const corpora = {
  base: buildBase(synsets, cookies),
  kjv: buildKjv(kjvPassages(fetched['bible-kjv-text'].root, fetched['bible-kjv'].root)),
  bofh: buildBofh(bofhExcuses(fetched['fortunes-bofh-excuses'].root)),
  bierce: buildBierce(bierceEntries(fetched['dict-devil'].root)),
};
const stats = Object.fromEntries(Object.entries(corpora).map(([name, c]) => [name, writeCorpus(name, c)]));
const wordCount = writeWords(Object.values(corpora).flatMap((c) => [...c.docs, ...c.chat.map((x) => `${x.user} ${x.assistant}`)]));
const manifest = {
  packages: PACKAGES.map((p) => ({ name: p.name, version: fetched[p.name].version, usedFor: p.corpus, licence: p.licence, notice: p.notice })),
  corpora: stats,
  words: { file: 'test/fixtures/demo-words.txt', count: wordCount },
};
writeFileSync(join(OUT, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
const total = readdirSync(OUT)
  .filter((f) => /\.(txt|jsonl)$/.test(f))
  .reduce((n, f) => n + statSync(join(OUT, f)).size, 0);
log(`wrote ${(total / 2 ** 20).toFixed(1)} MiB of text to ${OUT}, and ${wordCount} words to ${WORDS_FILE}`);
