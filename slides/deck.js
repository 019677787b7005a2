// Deck behaviour, inlined into every deck by mfmda_lib.teaching.slides.
// 1. Navigation: arrows / space / PageUp / PageDown enter presentation mode and move; Esc leaves it.
// 2. A self-check for the slide test: after load, #deck-status holds the slide count and the images
//    that failed to load (naturalWidth 0), as JSON and data-* attributes.
(function () {
  const slides = Array.from(document.querySelectorAll("section.slide"));
  let current = 0;
  function show(i) {
    current = Math.max(0, Math.min(slides.length - 1, i));
    slides.forEach((s, k) => s.classList.toggle("current", k === current));
    document.body.classList.add("present");
  }
  document.addEventListener("keydown", (e) => {
    if (["ArrowRight", "ArrowDown", "PageDown", " "].includes(e.key)) { show(document.body.classList.contains("present") ? current + 1 : 0); e.preventDefault(); }
    else if (["ArrowLeft", "ArrowUp", "PageUp"].includes(e.key)) { show(current - 1); e.preventDefault(); }
    else if (e.key === "Home") { show(0); }
    else if (e.key === "End") { show(slides.length - 1); }
    else if (e.key === "Escape") { document.body.classList.remove("present"); }
  });
  function report() {
    const images = Array.from(document.images);
    const broken = images.filter((img) => !(img.complete && img.naturalWidth > 0)).map((img) => img.alt || "(no alt)");
    const status = document.getElementById("deck-status");
    const result = { slides: slides.length, images: images.length, broken: broken };
    status.textContent = JSON.stringify(result);
    status.dataset.slides = String(result.slides);
    status.dataset.images = String(result.images);
    status.dataset.broken = String(broken.length);
  }
  if (document.readyState === "complete") { report(); } else { window.addEventListener("load", report); }
})();
