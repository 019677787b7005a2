// Deck behaviour, inlined into every deck by course.slides.
// 1. Navigation: arrows / space / PageUp / PageDown enter presentation mode and move; Esc leaves it.
//    "#7" in the address opens slide 7 in presentation mode (the slide test's screenshots use it).
// 2. Speaker notes: hidden on screen; N (or "#notes" in the address) toggles the presenter view, the
//    current slide beside its notes; printing shows every slide with its notes.
// 3. A self-check for the slide test: after load, #deck-status holds, as JSON, the slide count, the
//    images that failed to load (naturalWidth 0), the placeholders shown, the rows of each results
//    table (named by the slide and present), and whether any note is visible on screen.
(function () {
  const slides = Array.from(document.querySelectorAll("section.slide"));
  let current = 0;
  function show(i) {
    current = Math.max(0, Math.min(slides.length - 1, i));
    slides.forEach((s, k) => s.classList.toggle("current", k === current));
    document.body.classList.add("present");
  }
  function fromHash() {
    const hash = window.location.hash.replace("#", "");
    const parts = hash.split(/[&,]/);
    if (parts.includes("notes")) { document.body.classList.add("presenter"); }
    const n = parts.map((p) => parseInt(p, 10)).find((v) => !isNaN(v));
    if (n !== undefined) { show(n - 1); } else if (parts.includes("notes")) { show(0); }
  }
  document.addEventListener("keydown", (e) => {
    if (["ArrowRight", "ArrowDown", "PageDown", " "].includes(e.key)) { show(document.body.classList.contains("present") ? current + 1 : 0); e.preventDefault(); }
    else if (["ArrowLeft", "ArrowUp", "PageUp"].includes(e.key)) { show(current - 1); e.preventDefault(); }
    else if (e.key === "Home") { show(0); }
    else if (e.key === "End") { show(slides.length - 1); }
    else if (e.key === "n" || e.key === "N") { document.body.classList.toggle("presenter"); show(current); }
    else if (e.key === "Escape") { document.body.classList.remove("present", "presenter"); }
  });
  function report() {
    const images = Array.from(document.images);
    const broken = images.filter((img) => !(img.complete && img.naturalWidth > 0)).map((img) => img.alt || "(no alt)");
    const placeholders = Array.from(document.querySelectorAll("[data-source='placeholder'], .placeholder"))
      .map((el) => el.getAttribute("alt") || el.textContent.trim().slice(0, 120));
    const tables = Array.from(document.querySelectorAll("table[data-result]")).map((t) => ({
      result: t.dataset.result,
      named: t.dataset.rows ? t.dataset.rows.split(",") : [],
      rows: Array.from(t.querySelectorAll("tbody tr[data-row]:not(.placeholder)")).map((r) => r.dataset.row),
    }));
    const notes = Array.from(document.querySelectorAll("aside.notes"));
    const notesVisible = notes.some((n) => getComputedStyle(n).display !== "none");
    const status = document.getElementById("deck-status");
    const result = { slides: slides.length, images: images.length, broken: broken, placeholders: placeholders,
                     tables: tables, notes: notes.length, notesVisible: notesVisible };
    status.textContent = JSON.stringify(result);
    status.dataset.slides = String(result.slides);
    status.dataset.images = String(result.images);
    status.dataset.broken = String(broken.length);
  }
  fromHash();
  window.addEventListener("hashchange", fromHash);
  if (document.readyState === "complete") { report(); } else { window.addEventListener("load", report); }
})();
