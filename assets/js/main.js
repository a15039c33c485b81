// Entry point: sign-in / register, then the chat screen; back to sign-in on sign-out or when
// the server refuses the session.

import { Auth } from './auth.js';
import { Connection } from './connection.js';
import { Chat } from './chat.js';
import { ChatView } from './view.js';
import { byId } from './dom.js';

const auth = new Auth();
/** The signed-in screen's parts, while signed in. */
let session = null;

const form = {
  root: byId('signin'),
  form: byId('auth-form'),
  title: byId('auth-title'),
  error: byId('auth-error'),
  email: byId('auth-email'),
  password: byId('auth-password'),
  hint: byId('auth-password-hint'),
  registerFields: byId('auth-register-fields'),
  displayName: byId('auth-name'),
  invite: byId('auth-invite'),
  submit: byId('auth-submit'),
  switchText: byId('auth-switch-text'),
  switchButton: byId('auth-switch'),
};
let mode = 'login';

function setMode(next) {
  mode = next;
  const register = mode === 'register';
  form.title.textContent = register ? 'Create an account' : 'Sign in';
  form.submit.textContent = register ? 'Create account' : 'Sign in';
  form.switchText.textContent = register ? 'Already have an account?' : 'New here?';
  form.switchButton.textContent = register ? 'Sign in instead' : 'Create an account';
  form.password.autocomplete = register ? 'new-password' : 'current-password';
  form.hint.hidden = !register;
  form.registerFields.hidden = !register;
  showError(null);
}

function showError(message) {
  form.error.textContent = message ?? '';
  form.error.hidden = !message;
}

function showSignIn(reason = null) {
  document.title = 'confab';
  byId('boot').hidden = true;
  form.root.hidden = false;
  form.password.value = '';
  showError(reason);
  form.email.focus();
}

form.switchButton.addEventListener('click', () => {
  setMode(mode === 'login' ? 'register' : 'login');
  form.email.focus();
});

form.form.addEventListener('submit', async (e) => {
  e.preventDefault();
  const email = form.email.value.trim();
  const password = form.password.value;
  if (!email || !password) {
    showError('Enter your email and password.');
    (email ? form.password : form.email).focus();
    return;
  }
  form.submit.disabled = true;
  form.form.setAttribute('aria-busy', 'true');
  try {
    if (mode === 'register') {
      await auth.register(email, password, {
        displayName: form.displayName.value.trim() || undefined,
        inviteCode: form.invite.value.trim() || undefined,
      });
    }
    else await auth.login(email, password);
    form.invite.value = '';
  } catch (err) {
    showError(err.message);
    form.password.focus();
    return;
  } finally {
    form.submit.disabled = false;
    form.form.removeAttribute('aria-busy');
  }
  form.root.hidden = true;
  form.password.value = '';
  startChat();
});

function startChat() {
  byId('boot').hidden = true;
  const conn = new Connection({ auth });
  const chat = new Chat({ auth, conn, user: auth.user });
  const view = new ChatView({ chat, conn, auth, onLogout: () => auth.logout() });
  session = { conn, chat, view };
  conn.start();
  if (chat.active) view.focusComposer();
  else byId('join-name').focus();
}

function stopChat() {
  if (!session) return;
  session.conn.stop();
  session.chat.dispose();
  session.view.dispose();
  session = null;
}

auth.addEventListener('signedout', (e) => {
  stopChat();
  if (location.pathname !== '/') history.replaceState(null, '', '/');
  showSignIn(e.detail.reason);
});

// The session survives a reload of this tab, and only that (see auth.js).
window.addEventListener('pagehide', () => auth.park());
document.addEventListener('freeze', () => auth.park());
window.addEventListener('pageshow', (e) => {
  if (e.persisted) auth.unpark();
});
document.addEventListener('resume', () => auth.unpark());
// Timers are throttled in background tabs: check the token as soon as the tab is back.
document.addEventListener('visibilitychange', () => {
  if (!document.hidden && auth.signedIn) auth.ensureFresh().catch(() => {});
});

setMode('login');
if (auth.restore()) startChat();
else showSignIn();
