// Opens the page given as argv[2] in Debian's headless Chromium (playwright-core, no
// downloaded browser) and prints its window.report as one JSON line once it is done, or
// failed, or 20 s passed.
import { chromium } from "playwright-core";

const url = process.argv[2];
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.error("page:", m.text()));
  await page.goto(url);
  const deadline = Date.now() + 20000;
  let report = null;
  while (Date.now() < deadline) {
    report = await page.evaluate(() => window.report);
    if (report && (report.done || report.error)) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  console.log(JSON.stringify(report));
} finally {
  await browser.close();
}
