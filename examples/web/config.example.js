// Copy to config.js (it is git-ignored) and fill in your project's URL and anon (publishable)
// key: Dashboard → Project Settings → API. scripts/example_app.py serves its own config.js.
window.IMAGE_WORKER_CONFIG = {
  supabaseUrl: 'https://YOUR-PROJECT-REF.supabase.co',
  anonKey: 'YOUR-ANON-KEY',
}
