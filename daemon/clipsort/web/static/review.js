// The review queue's keys: 1-9 file into a class, 0 into Clases/_none/, x selects, u undoes, arrows move.
// One key press is one action: its cards (and their copies) are filed in one request, and u takes
// back the whole of the last one. After each action the count and the status line say what is left.
(function () {
  "use strict";
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const flash = document.getElementById("flash");
  const count = document.getElementById("count");
  const cards = () => Array.from(document.querySelectorAll("#queue .card"));
  let focused = null;

  function focusCard(card) {
    if (!card) return;
    focused = card;
    card.focus();
    card.scrollIntoView({ block: "nearest" });
  }

  function open(card) {
    return !card.classList.contains("settled");
  }

  function files(card) {
    return Number(card.dataset.files || "1");
  }

  function recount() {
    const left = cards().filter(open);
    const total = left.reduce((sum, card) => sum + files(card), 0);
    if (count) count.textContent = total + (total === 1 ? " file" : " files") + " to review";
    return total;
  }

  function step(by) {
    const all = cards();
    const at = all.indexOf(focused);
    focusCard(all[Math.min(all.length - 1, Math.max(0, at + by))]);
  }

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      headers: { "X-CSRF-Token": csrf },
      body: body,
      credentials: "same-origin",
    });
    return { response, html: await response.text() };
  }

  // The response holds one card per entry it acted on; each replaces the card showing that entry.
  function replaceCards(html) {
    const holder = document.createElement("div");
    holder.innerHTML = html.trim();
    const fresh = [];
    for (const card of Array.from(holder.querySelectorAll(".card"))) {
      const old = document.getElementById("card-" + card.dataset.entry) ||
        document.querySelector('.card[data-copies~="' + card.dataset.entry + '"]');
      if (old) {
        card.dataset.files = old.dataset.files || "1";
        card.dataset.copies = old.dataset.copies || "";
        old.replaceWith(card);
        bind(card);
        fresh.push(card);
      }
    }
    return fresh;
  }

  async function fileInto(label, targets) {
    const all = cards();
    const after = all.indexOf(targets[targets.length - 1]);
    const body = new URLSearchParams({ label: label });
    targets.forEach((card) => {
      body.append("entry", card.dataset.entry);
      (card.dataset.copies || "").split(" ").filter(Boolean).forEach((id) => body.append("entry", id));
    });
    const { response, html } = await post("/entries/file", body);
    const fresh = replaceCards(html);
    const moved = targets.reduce((sum, card) => sum + files(card), 0);
    const left = recount();
    flash.textContent = response.ok
      ? "filed " + moved + (moved === 1 ? " file" : " files") + " into " + label + "; " + left + " left (u undoes)"
      : fresh.map((card) => card.querySelector(".note")?.textContent).join("; ");
    // Focus the next open card after the last one filed, not the first of the queue.
    const now = cards();
    const next = now.slice(after + 1).find(open) || now.find(open);
    focusCard(next || fresh[fresh.length - 1]);
  }

  async function undo() {
    const { response, html } = await post("/undo", new URLSearchParams());
    if (!response.ok || !response.headers.get("X-Clipsort-Entries")) {
      flash.textContent = "nothing to undo";
      return;
    }
    const fresh = replaceCards(html);
    const left = recount();
    flash.textContent = "undone: " + fresh.length + (fresh.length === 1 ? " card" : " cards") + " back; " + left + " left";
    focusCard(fresh[0]);
  }

  function chosen() {
    const selected = cards().filter((c) => c.querySelector(".select")?.checked && open(c));
    return selected.length ? selected : focused && open(focused) ? [focused] : [];
  }

  function labelFor(key, card) {
    const classes = JSON.parse(card.dataset.classes || "[]");
    if (key === "0") return card.dataset.negatives === "yes" ? "_none" : null;
    return classes[Number(key) - 1] || null;
  }

  function bind(card) {
    card.addEventListener("focus", () => { focused = card; });
    card.addEventListener("click", () => { focused = card; });
    card.querySelectorAll("button.file").forEach((button) => {
      button.addEventListener("click", (event) => {
        event.stopPropagation();
        fileInto(button.dataset.label, [card]);
      });
    });
  }

  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement && event.target.type !== "checkbox") return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key;
    if (key === "ArrowDown" || key === "ArrowRight" || key === "j") { step(1); event.preventDefault(); }
    else if (key === "ArrowUp" || key === "ArrowLeft" || key === "k") { step(-1); event.preventDefault(); }
    else if (key === "x" && focused) { const box = focused.querySelector(".select"); if (box) box.checked = !box.checked; }
    else if (key === "u") { undo(); }
    else if (/^[0-9]$/.test(key)) {
      const targets = chosen();
      if (!targets.length) return;
      const label = labelFor(key, targets[0]);
      if (label) fileInto(label, targets);
      else flash.textContent = "no class on key " + key;
    }
  });

  cards().forEach(bind);
  recount();
  focusCard(cards().find(open));
})();
