// @ts-check
/**
 * The chat view: streamed replies, multi-turn, past conversations (kept in localStorage by id and
 * resumed with `start` + `conversationId`), thumbs with reason and comment, regenerate, side-by-side
 * comparison (`compare` → `comparison`) and ranking of sibling replies (`ranking`).
 */
import { $, el } from './dom.js';
import { WsClient, defaultWsUrl } from './ws-client.js';

/** @typedef {import('./ws-client.js').Msg} Msg */
/** @typedef {{ id: string, title: string, updatedAt: number }} ConvEntry */
/** @typedef {{ id: string, content: string }} Reply */

const CONV_KEY = 'rlhf-chat.conversations';
const USER_KEY = 'rlhf-chat.userId';
const REASONS = ['not_factual', 'unhelpful', 'unsafe', 'too_long', 'other'];

/** @returns {ConvEntry[]} */
export function loadConversations() {
  try {
    const v = JSON.parse(localStorage.getItem(CONV_KEY) ?? '[]');
    return Array.isArray(v) ? v.filter((c) => c && typeof c.id === 'string') : [];
  } catch {
    return [];
  }
}

/** @param {ConvEntry[]} list */
function saveConversations(list) {
  localStorage.setItem(CONV_KEY, JSON.stringify(list.slice(0, 100)));
}

function userId() {
  let id = localStorage.getItem(USER_KEY);
  if (!id) {
    id = `web-${crypto.randomUUID()}`;
    localStorage.setItem(USER_KEY, id);
  }
  return id;
}

const state = {
  /** @type {WsClient} */
  client: /** @type {any} */ (undefined),
  /** @type {string | undefined} */
  conversationId: undefined,
  /** The next user message continues from here (set after picking B); otherwise the server's active branch. */
  /** @type {string | undefined} */
  nextParentId: undefined,
  /** User message id → replies to it seen in this page. */
  /** @type {Map<string, Reply[]>} */
  siblings: new Map(),
  busy: false,
  /** @type {{ ids: string[] } | undefined} */
  compare: undefined,
  /** @type {{ parentId: string, order: Reply[] } | undefined} */
  rank: undefined,
};

/** @param {string} s */
function setStatus(s) {
  $('status').textContent = s;
}

/** @param {boolean} b */
function setBusy(b) {
  state.busy = b;
  /** @type {HTMLButtonElement} */ ($('send')).disabled = b;
  for (const btn of document.querySelectorAll('.msg .actions button.gen')) /** @type {HTMLButtonElement} */ (btn).disabled = b;
}

/** @param {string} parentId @param {Reply} r */
function addSibling(parentId, r) {
  const list = state.siblings.get(parentId) ?? [];
  if (!list.some((x) => x.id === r.id)) list.push(r);
  state.siblings.set(parentId, list);
}

function renderConversations() {
  const ul = $('conversations');
  ul.replaceChildren(
    ...loadConversations().map((c) => {
      const li = el('li', { 'data-id': c.id, title: c.id }, [c.title || c.id]);
      if (c.id === state.conversationId) li.classList.add('current');
      li.addEventListener('click', () => void resume(c.id));
      return li;
    }),
  );
}

/** @param {string} id @param {string} [title] */
function rememberConversation(id, title) {
  const list = loadConversations();
  const old = list.find((c) => c.id === id);
  const entry = { id, title: old?.title || title || '', updatedAt: Date.now() };
  saveConversations([entry, ...list.filter((c) => c.id !== id)]);
  renderConversations();
}

/** @param {string} text @param {string} [id] */
function userBubble(text, id) {
  const div = el('div', { class: 'msg user', 'data-testid': 'user-message' }, [el('div', { class: 'text' }, [text])]);
  if (id) div.dataset.id = id;
  $('messages').append(div);
  return div;
}

/** An assistant bubble, filled by deltas, then given its id and actions. */
function assistantBubble() {
  const text = el('div', { class: 'text' });
  const div = el('div', { class: 'msg assistant streaming', 'data-testid': 'assistant-message', 'data-deltas': '0' }, [text]);
  $('messages').append(div);
  return div;
}

/**
 * Finishes an assistant bubble: id, parent and the feedback buttons.
 * @param {HTMLElement} div @param {string} id @param {string} parentId @param {string} content
 */
function finishBubble(div, id, parentId, content) {
  div.classList.remove('streaming');
  div.dataset.id = id;
  div.dataset.parentId = parentId;
  /** @type {HTMLElement} */ (div.querySelector('.text')).textContent = content;
  div.querySelector('.actions')?.remove();
  div.querySelector('.down-form')?.remove();
  div.querySelector('.fb-status')?.remove();
  const status = el('span', { class: 'fb-status', 'data-testid': 'feedback-status' });
  const up = el('button', { type: 'button', 'data-testid': 'thumb-up', title: 'Good reply' }, ['👍 Good']);
  const down = el('button', { type: 'button', 'data-testid': 'thumb-down', title: 'Bad reply' }, ['👎 Bad']);
  const regen = el('button', { type: 'button', class: 'gen', 'data-testid': 'regenerate' }, ['Regenerate']);
  const compare = el('button', { type: 'button', class: 'gen', 'data-testid': 'compare' }, ['Compare two replies']);
  const n = state.siblings.get(parentId)?.length ?? 1;
  const rank = el('button', { type: 'button', 'data-testid': 'rank' }, [`Rank replies (${n})`]);
  rank.hidden = n < 2;
  const reason = /** @type {HTMLSelectElement} */ (el('select', { 'data-testid': 'down-reason' }, [el('option', { value: '' }, ['reason…']), ...REASONS.map((r) => el('option', { value: r }, [r.replace('_', ' ')]))]));
  const comment = /** @type {HTMLInputElement} */ (el('input', { 'data-testid': 'down-comment', placeholder: 'comment (optional)', maxlength: '2000' }));
  const form = el('form', { class: 'down-form' }, [reason, comment, el('button', { type: 'submit', 'data-testid': 'down-submit' }, ['Send'])]);
  form.hidden = true;
  up.addEventListener('click', () => void sendThumb(id, 'up', undefined, '', status));
  down.addEventListener('click', () => {
    form.hidden = !form.hidden;
  });
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    form.hidden = true;
    void sendThumb(id, 'down', reason.value || undefined, comment.value.trim(), status);
  });
  regen.addEventListener('click', () => void regenerate(div));
  compare.addEventListener('click', () => void startCompare(parentId));
  rank.addEventListener('click', () => openRank(parentId));
  div.append(el('div', { class: 'actions' }, [up, down, regen, compare, rank]), form, status);
}

/** Updates the "Rank replies (n)" buttons of replies to `parentId`. */
function refreshRankButtons(parentId) {
  const n = state.siblings.get(parentId)?.length ?? 1;
  for (const div of document.querySelectorAll(`.msg.assistant[data-parent-id="${CSS.escape(parentId)}"]`)) {
    const b = /** @type {HTMLButtonElement | null} */ (div.querySelector('[data-testid="rank"]'));
    if (b) {
      b.textContent = `Rank replies (${n})`;
      b.hidden = n < 2;
    }
  }
}

/**
 * @param {string} messageId @param {'up' | 'down'} value @param {string | undefined} reason
 * @param {string} comment @param {HTMLElement} status
 */
async function sendThumb(messageId, value, reason, comment, status) {
  const m = await state.client.request(
    { type: 'thumb', messageId, value, ...(reason ? { reason } : {}), ...(comment ? { comment } : {}) },
    (x) => x.type === 'feedback_ack',
  );
  status.textContent = m.type === 'error' ? `error: ${m.code}` : `thanks: thumb ${value}${reason ? ` (${reason})` : ''} saved`;
  status.classList.toggle('error', m.type === 'error');
}

/** Streams one reply into a new (or given) bubble. @param {Record<string, unknown>} msg @param {HTMLElement} [into] */
async function streamReply(msg, into) {
  const div = into ?? assistantBubble();
  if (into) {
    div.classList.add('streaming');
    div.dataset.deltas = '0';
    /** @type {HTMLElement} */ (div.querySelector('.text')).textContent = '';
  }
  const text = /** @type {HTMLElement} */ (div.querySelector('.text'));
  setBusy(true);
  try {
    const m = await state.client.request(msg, (x) => x.type === 'reply', (x) => {
      if (x.type === 'reply_start' && x.userMessageId) {
        const u = /** @type {HTMLElement | null} */ (div.previousElementSibling);
        if (u?.classList.contains('user') && !u.dataset.id) u.dataset.id = x.userMessageId;
      }
      if (x.type === 'delta') {
        text.textContent += x.text;
        div.dataset.deltas = String(Number(div.dataset.deltas) + 1);
      }
    });
    if (m.type === 'error') {
      div.classList.remove('streaming');
      text.textContent = `error: ${m.code}: ${m.message}`;
      div.classList.add('error');
      return undefined;
    }
    addSibling(m.parentId, { id: m.messageId, content: m.content });
    finishBubble(div, m.messageId, m.parentId, m.content);
    refreshRankButtons(m.parentId);
    return m;
  } finally {
    setBusy(false);
  }
}

async function newConversation() {
  const m = await state.client.request({ type: 'start', userId: userId() }, (x) => x.type === 'conversation');
  if (m.type === 'error') throw new Error(`${m.code}: ${m.message}`);
  state.conversationId = m.conversationId;
  state.nextParentId = undefined;
  state.siblings.clear();
  closePanels();
  $('messages').replaceChildren();
  renderConversations();
  return m;
}

/** @param {string} id */
async function resume(id) {
  if (state.busy) return;
  const m = await state.client.request({ type: 'start', userId: userId(), conversationId: id }, (x) => x.type === 'conversation');
  if (m.type === 'error') {
    setStatus(`cannot resume ${id}: ${m.code}`);
    if (m.code === 'unknown_conversation') saveConversations(loadConversations().filter((c) => c.id !== id));
    renderConversations();
    return;
  }
  state.conversationId = m.conversationId;
  state.nextParentId = undefined;
  state.siblings.clear();
  closePanels();
  $('messages').replaceChildren();
  /** @type {string | undefined} */
  let lastUser;
  for (const msg of /** @type {{ id: string, role: string, content: string }[]} */ (m.messages ?? [])) {
    if (msg.role === 'user') {
      userBubble(msg.content, msg.id);
      lastUser = msg.id;
    } else if (msg.role === 'assistant' && lastUser) {
      addSibling(lastUser, { id: msg.id, content: msg.content });
      finishBubble(assistantBubble(), msg.id, lastUser, msg.content);
    }
  }
  rememberConversation(m.conversationId);
  setStatus(`resumed conversation (${m.modelVersion ?? ''})`);
}

/** @param {string} content */
async function send(content) {
  if (!state.conversationId) await newConversation();
  const convId = /** @type {string} */ (state.conversationId);
  rememberConversation(convId, content.slice(0, 60));
  userBubble(content);
  const parentId = state.nextParentId;
  state.nextParentId = undefined;
  await streamReply({ type: 'user_message', conversationId: convId, content, ...(parentId ? { parentId } : {}) });
}

/** @param {HTMLElement} div the bubble of the reply to regenerate */
async function regenerate(div) {
  if (state.busy || !div.dataset.id) return;
  await streamReply({ type: 'regenerate', conversationId: state.conversationId, messageId: div.dataset.id }, div);
}

function closePanels() {
  $('compare-panel').hidden = true;
  $('rank-panel').hidden = true;
  state.compare = undefined;
  state.rank = undefined;
}

/** Two candidates to the user message `parentId`, streamed side by side. @param {string} parentId */
async function startCompare(parentId) {
  if (state.busy) return;
  closePanels();
  const panel = $('compare-panel');
  const cols = [$('cand-a'), $('cand-b')];
  const versions = [$('ver-a'), $('ver-b')];
  for (const c of [...cols, ...versions]) c.textContent = '';
  const buttons = /** @type {HTMLButtonElement[]} */ ([...panel.querySelectorAll('button[data-choice]')]);
  for (const b of buttons) b.disabled = true;
  panel.hidden = false;
  setBusy(true);
  try {
    const m = await state.client.request({ type: 'compare', conversationId: state.conversationId, parentId }, (x) => x.type === 'candidates', (x) => {
      const col = cols[Number(x.candidate ?? 0)];
      if (!col) return;
      if (x.type === 'delta') col.textContent += x.text;
      if (x.type === 'reply') {
        col.textContent = x.content;
        col.dataset.id = x.messageId;
        // An arena reply's version stays "hidden" until the comparison is stored.
        const v = versions[Number(x.candidate ?? 0)];
        if (v) v.textContent = x.arena ? 'hidden' : x.modelVersion;
        addSibling(parentId, { id: x.messageId, content: x.content });
      }
    });
    if (m.type === 'error') {
      cols[0].textContent = `error: ${m.code}: ${m.message}`;
      return;
    }
    state.compare = { ids: m.messageIds };
    panel.dataset.a = m.messageIds[0];
    panel.dataset.b = m.messageIds[1];
    for (const b of buttons) b.disabled = false;
    refreshRankButtons(parentId);
    // Candidate 0 is now the active branch: show it in the thread.
    const last = /** @type {HTMLElement | null} */ ($('messages').querySelector(`.msg.assistant[data-parent-id="${CSS.escape(parentId)}"]`));
    if (last) finishBubble(last, m.messageIds[0], parentId, cols[0].textContent ?? '');
  } finally {
    setBusy(false);
  }
}

/** @param {string} choice */
async function pick(choice) {
  const cmp = state.compare;
  if (!cmp) return;
  const [a, b] = cmp.ids;
  const panel = $('compare-panel');
  const m = await state.client.request({ type: 'comparison', a, b, choice }, (x) => x.type === 'feedback_ack');
  if (m.type === 'error') {
    setStatus(`comparison not saved: ${m.code}`);
    return;
  }
  if (choice === 'b') {
    // Continue the conversation from B, and show it in the thread.
    state.nextParentId = b;
    const bubble = /** @type {HTMLElement | null} */ ($('messages').querySelector(`.msg.assistant[data-id="${CSS.escape(a ?? '')}"]`));
    if (bubble) finishBubble(bubble, /** @type {string} */ (b), /** @type {string} */ (bubble.dataset.parentId), $('cand-b').textContent ?? '');
  }
  state.compare = undefined;
  if (m.revealed) {
    // The arena's reveal: keep the panel open (choices off) so the versions can be read.
    $('ver-a').textContent = m.revealed.a;
    $('ver-b').textContent = m.revealed.b;
    for (const btn of panel.querySelectorAll('button[data-choice]')) /** @type {HTMLButtonElement} */ (btn).disabled = true;
    setStatus(`comparison saved: ${choice} · A was ${m.revealed.a}, B was ${m.revealed.b}`);
    return;
  }
  panel.hidden = true;
  setStatus(`comparison saved: ${choice}`);
}

/** @param {string} parentId */
function openRank(parentId) {
  closePanels();
  state.rank = { parentId, order: [...(state.siblings.get(parentId) ?? [])] };
  renderRank();
  $('rank-panel').hidden = false;
}

function renderRank() {
  const r = state.rank;
  if (!r) return;
  $('rank-list').replaceChildren(
    ...r.order.map((reply, i) => {
      const upB = el('button', { type: 'button', title: 'move up', 'data-testid': 'rank-up' }, ['↑']);
      const downB = el('button', { type: 'button', title: 'move down', 'data-testid': 'rank-down' }, ['↓']);
      /** @type {HTMLButtonElement} */ (upB).disabled = i === 0;
      /** @type {HTMLButtonElement} */ (downB).disabled = i === r.order.length - 1;
      /** @param {number} j */
      const swap = (j) => {
        const tmp = /** @type {Reply} */ (r.order[i]);
        r.order[i] = /** @type {Reply} */ (r.order[j]);
        r.order[j] = tmp;
        renderRank();
      };
      upB.addEventListener('click', () => swap(i - 1));
      downB.addEventListener('click', () => swap(i + 1));
      return el('li', { 'data-id': reply.id }, [upB, downB, ' ', reply.content || '(empty)']);
    }),
  );
}

async function submitRank() {
  const r = state.rank;
  if (!r) return;
  const notRankable = /** @type {HTMLInputElement} */ ($('rank-not-rankable')).checked;
  const m = await state.client.request(
    { type: 'ranking', candidates: r.order.map((x) => x.id), ...(notRankable ? { notRankable: true } : {}) },
    (x) => x.type === 'feedback_ack',
  );
  setStatus(m.type === 'error' ? `ranking not saved: ${m.code}` : 'ranking saved');
  if (m.type !== 'error') closePanels();
}

async function connect() {
  state.client = new WsClient(defaultWsUrl());
  const ready = await state.client.connect();
  setStatus(`connected · model ${ready.modelVersion}`);
  state.client.onClose = () => {
    setStatus('disconnected — reconnecting…');
    setTimeout(() => void reconnect(), 1000);
  };
}

async function reconnect() {
  try {
    await connect();
    if (state.conversationId) await resume(state.conversationId);
  } catch {
    setTimeout(() => void reconnect(), 3000);
  }
}

export async function initChat() {
  $('composer').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const input = /** @type {HTMLTextAreaElement} */ ($('input'));
    const content = input.value.trim();
    if (!content || state.busy) return;
    input.value = '';
    void send(content);
  });
  $('input').addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey) {
      ev.preventDefault();
      /** @type {HTMLFormElement} */ ($('composer')).requestSubmit();
    }
  });
  $('new-chat').addEventListener('click', () => void newConversation());
  for (const b of $('compare-panel').querySelectorAll('button[data-choice]')) {
    b.addEventListener('click', () => void pick(/** @type {string} */ (/** @type {HTMLElement} */ (b).dataset.choice)));
  }
  $('compare-cancel').addEventListener('click', closePanels);
  $('rank-submit').addEventListener('click', () => void submitRank());
  $('rank-cancel').addEventListener('click', closePanels);
  renderConversations();
  await connect();
  document.body.dataset.ready = 'true';
}
