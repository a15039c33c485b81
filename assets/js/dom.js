// A tiny element builder. Children that are strings become text nodes and attributes are set as
// attributes, so text from the network can never turn into markup: this file (and the rest of
// the client) never assigns innerHTML / outerHTML or calls insertAdjacentHTML.

/**
 * h('button', { class: 'x', type: 'button', onclick: fn }, 'Retry')
 * - `class` → className; `dataset` → data-* ; `on<event>` → addEventListener
 * - `true` → boolean attribute; `null` / `undefined` / `false` → left out
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** The element with this id, or a loud failure: the page and the script disagree. */
export function byId(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing from index.html`);
  return el;
}
