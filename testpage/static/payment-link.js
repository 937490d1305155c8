// The sandbox's stand-in for CamPay's hosted payment page (a payment link). Its payer pays by mobile
// money or by card, or declines; the server then learns the outcome as it would CamPay's, and this page
// sends the payer back where the link asked (redirect_url, failure_redirect_url), if anywhere.
const $ = (id) => document.getElementById(id);
const { reference, options, redirect, failureRedirect } = document.body.dataset;
const offered = new Set(options.split(","));

for (const element of document.querySelectorAll("[data-option]")) {
  element.hidden = !offered.has(element.dataset.option);
}

async function pay(method, outcome) {
  $("link-error").textContent = "";
  for (const button of document.querySelectorAll("button")) button.disabled = true;
  const body = { method, outcome };
  if (method === "MOMO") body.phone_number = $("payer-phone").value.trim();
  const response = await fetch(`/payment-test/link/${encodeURIComponent(reference)}/pay`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = answer.error || {};
    $("link-error").textContent = `${response.status} ${error.code || ""}: ${error.message || response.statusText}`;
    for (const button of document.querySelectorAll("button")) button.disabled = false;
    return;
  }
  $("link-result").dataset.status = answer.status || "";
  $("link-result").textContent = `Payment ${answer.status}. You may close this page.`;
  const back = answer.status === "SUCCESSFUL" ? redirect : failureRedirect || redirect;
  if (back) window.location.assign(back);
}

$("momo-form").addEventListener("submit", (e) => {
  e.preventDefault();
  pay("MOMO", "SUCCESSFUL");
});
$("pay-card").addEventListener("click", () => pay("CARD", "SUCCESSFUL"));
$("decline").addEventListener("click", () => pay(offered.has("MOMO") ? "MOMO" : "CARD", "FAILED"));
