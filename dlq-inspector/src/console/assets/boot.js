// Starts the console once every view is registered.
"use strict";
(async function () {
  try {
    SF.session = await SF.api("GET", "/session");
  } catch (e) {
    return;
  }
  document.getElementById("who").textContent = SF.session.by + (SF.session.role === "read" ? " (read-only)" : "");
  document.getElementById("logout").addEventListener("click", async () => {
    await SF.api("POST", "/logout", {}).catch(() => {});
    location.href = "/login";
  });
  SF.connect();
  window.addEventListener("hashchange", SF.route);
  SF.route();
})();
