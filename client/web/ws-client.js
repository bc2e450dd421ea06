// @ts-check
/**
 * A small client for the `/ws` chat protocol: one socket, requests by `requestId`, each request
 * settled by its final message (or an `error`), with every intermediate message passed to a callback.
 */

/** @typedef {Record<string, any> & { type: string }} Msg */

export class WsClient {
  /** @param {string} url */
  constructor(url) {
    this.url = url;
    /** @type {WebSocket | undefined} */
    this.ws = undefined;
    /** @type {Msg | undefined} */
    this.ready = undefined;
    this.n = 0;
    /** @type {Map<string, (m: Msg) => void>} */
    this.pending = new Map();
    /** @type {(m: Msg) => void} */
    this.onUnsolicited = () => {};
    /** @type {(ev: CloseEvent) => void} */
    this.onClose = () => {};
  }

  /** @returns {Promise<Msg>} the `ready` message */
  connect() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      this.ws = ws;
      let opened = false;
      ws.onmessage = (ev) => {
        /** @type {Msg} */
        let m;
        try {
          m = JSON.parse(String(ev.data));
        } catch {
          return;
        }
        if (m.type === 'ready') {
          opened = true;
          this.ready = m;
          resolve(m);
          return;
        }
        const handler = typeof m.requestId === 'string' ? this.pending.get(m.requestId) : undefined;
        if (handler) handler(m);
        else this.onUnsolicited(m);
      };
      ws.onclose = (ev) => {
        for (const h of [...this.pending.values()]) h({ type: 'error', code: 'connection_closed', message: `connection closed (${ev.code})` });
        this.pending.clear();
        if (!opened) reject(new Error(`connection closed (${ev.code})`));
        this.onClose(ev);
      };
      ws.onerror = () => {};
    });
  }

  get open() {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  /**
   * Sends `msg` with a fresh requestId; resolves with the message for which `isFinal` is true,
   * or with an `error` message.
   * @param {Record<string, unknown>} msg
   * @param {(m: Msg) => boolean} isFinal
   * @param {(m: Msg) => void} [onMessage]
   * @returns {Promise<Msg>}
   */
  request(msg, isFinal, onMessage = () => {}) {
    const requestId = `w${++this.n}`;
    return new Promise((resolve) => {
      this.pending.set(requestId, (m) => {
        if (m.type === 'error' || isFinal(m)) {
          this.pending.delete(requestId);
          resolve(m);
        } else onMessage(m);
      });
      if (!this.ws || !this.open) {
        this.pending.delete(requestId);
        resolve({ type: 'error', code: 'connection_closed', message: 'not connected' });
        return;
      }
      this.ws.send(JSON.stringify({ ...msg, requestId }));
    });
  }

  close() {
    this.ws?.close();
  }
}

/** The WebSocket URL of the server that served this page. */
export function defaultWsUrl() {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
}
