// The login page: the admin key (the node's `admin.secret`, or its API key)
// is posted once to /admin/login and never kept by the page; the node
// answers with an HttpOnly cookie. Shows the server's message for a wrong
// key, a rate limit or an expired session (`notice`, from the router).

import * as api from "../api.js";
import { h, status } from "../dom.js";

export function mount(view, { notice, next }, { go }) {
  const key = h("input", {
    type: "password",
    name: "key",
    id: "login-key",
    autocomplete: "current-password",
    required: true,
    testid: "login-key",
  });
  const submit = h("button", { type: "submit", class: "primary", testid: "login-submit" }, "Log in");
  const error = h("p", { role: "alert", testid: "login-error", hidden: true });
  if (notice) status(error, notice.kind, notice.text);

  const form = h(
    "form",
    { class: "card login", testid: "login-form", autocomplete: "off" },
    h("h1", {}, "Switchboard admin"),
    h("p", { class: "muted" }, "Log in with the node's admin key."),
    h("label", { for: "login-key" }, "Admin key"),
    key,
    error,
    submit,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    status(error);
    try {
      await api.login(key.value);
      key.value = "";
      go(next || "#/nodes");
    } catch (err) {
      status(error, "error", err.message);
      key.select();
    } finally {
      submit.disabled = false;
    }
  });
  view.replaceChildren(form);
  key.focus();
  return () => {};
}
