// Placeholder until the admin UI's build (admin/) replaces admin/dist/.
const status = document.getElementById("status");
if (status) {
  status.textContent += " Loaded.";
}
