/**
 * Templated dialogues and prose built from WordNet and Factbook facts. Every follow-up question
 * refers back to an earlier turn ("Use it in a sentence.", "And what is its population?"), so a
 * model must read the conversation to answer: the answer contains the word or country named
 * only in an earlier turn.
 *
 * Kinds:
 *   wordnet  — "What does lucid mean?" → definition; "Use it in a sentence." → an example that contains the word.
 *   factbook — "What is the capital of Egypt?" → capital; one or two follow-ups about "it".
 *   mixed    — a word and a country in one conversation; the last question goes back to the first topic.
 */
import type { ChatMessage } from '../model/chat-template.ts';
import type { Country, IndexEntry, PartOfSpeech, Synset } from './data-sources.ts';
import type { Rng } from '../model/random.ts';

/** One line of dialogues.*.jsonl. */
export interface Dialogue {
  messages: ChatMessage[];
  kind: 'wordnet' | 'factbook' | 'mixed';
  meta: { word?: string; country?: string; [k: string]: string | number | undefined };
}

/** The sense of a word that dialogues use: its definition and an example containing the word. */
export interface WordSense {
  word: string;
  pos: PartOfSpeech;
  /** Key of the synset in `readWordnet().synsets`. */
  synset: string;
  definition: string;
  example: string;
}

const MAX_DEFINITION = 140; // characters; keeps replies under ~60 tokens
const MAX_EXAMPLE = 90;

const WORD_CHAR = /[\p{L}\p{N}]/u;
/** Whole-word, case-insensitive containment (a per-word RegExp with Unicode classes compiles too slowly for 100k words). */
function containsWord(text: string, word: string): boolean {
  const t = text.toLowerCase();
  for (let i = t.indexOf(word); i >= 0; i = t.indexOf(word, i + 1)) {
    const before = t[i - 1], after = t[i + word.length];
    if ((before === undefined || !WORD_CHAR.test(before)) && (after === undefined || !WORD_CHAR.test(after))) return true;
  }
  return false;
}

/**
 * Picks one sense per usable word: lowercase letters (one or two words, 3-24 chars), not rare
 * (sense-tagged in WordNet's corpus or present in `knownWords`), with an example sentence that
 * contains the word. The most frequent part of speech and sense win. Sorted by word.
 */
export function selectWordSenses(synsets: ReadonlyMap<string, Synset>, index: readonly IndexEntry[], knownWords: ReadonlySet<string>): WordSense[] {
  const byWord = new Map<string, IndexEntry[]>();
  for (const e of index) {
    if (!/^[a-z]+(?:[ -][a-z]+)?$/.test(e.lemma) || e.lemma.length < 3 || e.lemma.length > 24) continue;
    if (e.tagged === 0 && !e.lemma.split(/[ -]/).every((w) => knownWords.has(w))) continue;
    const list = byWord.get(e.lemma) ?? [];
    list.push(e);
    byWord.set(e.lemma, list);
  }
  const out: WordSense[] = [];
  for (const [word, entries] of byWord) {
    entries.sort((a, b) => b.tagged - a.tagged); // stable: ties keep noun, verb, adjective, adverb order
    found: for (const e of entries) {
      for (const off of e.offsets) {
        const s = synsets.get(off);
        if (!s || !s.definition || s.definition.length > MAX_DEFINITION) continue;
        const example = s.examples.find((x) => x.length <= MAX_EXAMPLE && containsWord(x, word));
        if (example) {
          out.push({ word, pos: e.pos, synset: off, definition: s.definition, example });
          break found;
        }
      }
    }
  }
  return out.sort((a, b) => (a.word < b.word ? -1 : a.word > b.word ? 1 : 0));
}

const SYSTEM_PROMPTS = [
  'You are a helpful assistant.',
  'You are a helpful assistant. Answer briefly.',
  'You are a friendly assistant who knows words and countries.',
  'Keep your answers short and clear.',
];
const ASK_MEANING = ['What does {w} mean?', 'What does "{w}" mean?', 'What is the meaning of {w}?', 'Define {w}.', 'What is the definition of "{w}"?', 'Can you tell me what {w} means?', 'What does the word {w} mean?'];
const ASK_EXAMPLE = ['Use it in a sentence.', 'Can you use it in a sentence?', 'Give me an example.', 'How would I use it in a sentence?', 'Show me how to use it.', 'Example, please.', 'Could you give an example sentence?'];
const ASK_EXAMPLE_LATER = [
  'Going back to the word from before, can you use it in a sentence?',
  'Now use that word in a sentence.',
  'And the word I asked about first: give me an example.',
  'Back to the word: show me how to use it.',
];
const ASK_CAPITAL = ['What is the capital of {c}?', "What's the capital of {c}?", 'Which city is the capital of {c}?', 'Tell me the capital of {c}.', 'What city is the capital of {c}?'];
const ASK_CAPITAL_AGAIN = ['Remind me, what was the capital you mentioned?', 'What was that capital again?', 'Which capital did you name earlier?'];

const fill = (t: string, w: string): string => t.replace(/\{[wc]\}/g, w);
const sentence = (s: string): string => (/[.!?]$/.test(s) ? s : `${s}.`);

/** `"lucid" means (of language) transparently clear; easily understandable.` */
export function definitionReply(s: WordSense): string {
  const to = s.pos === 'verb' && /^[a-z]/.test(s.definition) ? 'to ' : '';
  return sentence(`"${s.word}" means ${to}${s.definition}`);
}

/**
 * A reply that names the word it illustrates, then quotes the example sentence (which contains
 * it too): a good assistant restates which word it is talking about.
 */
export function exampleReply(s: WordSense, rng: Rng): string {
  const ex = sentence(s.example);
  return rng.pick([`Here is an example with "${s.word}": ${ex}`, `Sure, "${s.word}" in a sentence: ${ex}`, `An example using "${s.word}": ${ex}`, `You could say it like this, with "${s.word}": ${ex}`]);
}

type Follow = { ask: string[]; reply: (c: Country) => string; has: (c: Country) => boolean; topic: string };
const FOLLOW_UPS: Follow[] = [
  { topic: 'population', ask: ['And what is its population?', 'How many people live there?', 'What is its population?'], has: (c) => !!c.population, reply: (c) => `${c.name} has a population of about ${c.population}.` },
  { topic: 'location', ask: ['Where is it?', 'Where is that country?', 'Where is it located?'], has: (c) => !!c.location, reply: (c) => `${c.name} is in ${c.location}.` },
  { topic: 'language', ask: ['What language do they speak there?', 'What is the main language there?'], has: (c) => !!c.language, reply: (c) => `The main language of ${c.name} is ${c.language}.` },
  { topic: 'area', ask: ['How big is it?', 'What is its area?'], has: (c) => !!c.area, reply: (c) => `${c.name} covers about ${c.area}.` },
];

const capitalReply = (c: Country): string => `The capital of ${c.name} is ${c.capital}.`;
const msg = (role: ChatMessage['role'], content: string): ChatMessage => ({ role, content });

function withSystem(messages: ChatMessage[], rng: Rng, systemRate: number): ChatMessage[] {
  return rng() < systemRate ? [msg('system', rng.pick(SYSTEM_PROMPTS)), ...messages] : messages;
}

/** "What does W mean?" → definition; "Use it in a sentence." → example containing W. */
export function wordnetDialogue(s: WordSense, rng: Rng, systemRate: number): Dialogue {
  const messages = [msg('user', fill(rng.pick(ASK_MEANING), s.word)), msg('assistant', definitionReply(s)), msg('user', rng.pick(ASK_EXAMPLE)), msg('assistant', exampleReply(s, rng))];
  return { messages: withSystem(messages, rng, systemRate), kind: 'wordnet', meta: { word: s.word, pos: s.pos } };
}

/** "What is the capital of C?" → capital; then one or two follow-ups about "it", answered by name. */
export function factbookDialogue(c: Country, rng: Rng, systemRate: number): Dialogue {
  const follows = rng.shuffle(FOLLOW_UPS.filter((f) => f.has(c))).slice(0, 1 + rng.int(2));
  const messages = [msg('user', fill(rng.pick(ASK_CAPITAL), c.name)), msg('assistant', capitalReply(c))];
  for (const f of follows) messages.push(msg('user', rng.pick(f.ask)), msg('assistant', f.reply(c)));
  return { messages: withSystem(messages, rng, systemRate), kind: 'factbook', meta: { country: c.name, topics: follows.map((f) => f.topic).join(',') } };
}

/**
 * A word and a country in one conversation; the last question goes back to the first topic:
 *   A: define W; capital of C; a follow-up about C; "back to the word: use it in a sentence".
 *   B: capital of C; define W; "what was that capital again?".
 */
export function mixedDialogue(s: WordSense, c: Country, rng: Rng, systemRate: number): Dialogue {
  const define = [msg('user', fill(rng.pick(ASK_MEANING), s.word)), msg('assistant', definitionReply(s))];
  const capital = [msg('user', fill(rng.pick(ASK_CAPITAL), c.name)), msg('assistant', capitalReply(c))];
  let messages: ChatMessage[];
  let variant: string;
  const follows = FOLLOW_UPS.filter((f) => f.has(c));
  if (rng() < 0.5 && follows.length > 0) {
    const f = rng.pick(follows);
    messages = [...define, ...capital, msg('user', rng.pick(f.ask)), msg('assistant', f.reply(c)), msg('user', rng.pick(ASK_EXAMPLE_LATER)), msg('assistant', exampleReply(s, rng))];
    variant = 'word-country-word';
  } else {
    messages = [...capital, ...define, msg('user', rng.pick(ASK_CAPITAL_AGAIN)), msg('assistant', capitalReply(c))];
    variant = 'country-word-country';
  }
  return { messages: withSystem(messages, rng, systemRate), kind: 'mixed', meta: { word: s.word, country: c.name, variant } };
}

const POS_NAME: Record<PartOfSpeech, string> = { noun: 'noun', verb: 'verb', adjective: 'adjective', adverb: 'adverb' };

/** A synset as a plain sentence or two: `Limpid, lucid or pellucid (adjective): (of language) ... For example: "lucid directions".` */
export function synsetProse(s: Synset): string {
  const names = s.lemmas.slice(0, 4);
  const list = names.length > 1 ? `${names.slice(0, -1).join(', ')} or ${names.at(-1)}` : names[0]!;
  const head = `${list[0]!.toUpperCase()}${list.slice(1)} (${POS_NAME[s.pos]}): ${sentence(s.definition)}`;
  if (s.examples.length === 0) return head;
  return `${head} For example: ${s.examples.slice(0, 3).map((e) => `"${e}"`).join('; ')}.`;
}

/** A country's background plus its facts as sentences. */
export function countryProse(c: Country): string {
  const facts = [capitalReply(c), ...FOLLOW_UPS.filter((f) => f.has(c)).map((f) => f.reply(c))];
  return [c.background, ...facts].filter(Boolean).join(' ');
}
