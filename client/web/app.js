// @ts-check
/** Entry point: the two views (chat, admin) and the tabs between them. */
import { initChat } from './chat.js';
import { initAdmin } from './admin.js';

/** @param {string} id */
const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));

let adminStarted = false;
for (const tab of document.querySelectorAll('.tab')) {
  tab.addEventListener('click', () => {
    const view = /** @type {HTMLElement} */ (tab).dataset.view;
    for (const t of document.querySelectorAll('.tab')) t.classList.toggle('active', t === tab);
    for (const v of document.querySelectorAll('.view')) /** @type {HTMLElement} */ (v).hidden = v.id !== view;
    if (view === 'admin-view' && !adminStarted) {
      adminStarted = true;
      initAdmin();
    }
  });
}
if (location.hash === '#admin') $('tab-admin').click();

initChat().catch((e) => {
  $('status').textContent = `error: ${e instanceof Error ? e.message : String(e)}`;
});
