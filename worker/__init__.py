"""image-worker: turns rows in a Supabase ``jobs`` table into generated images."""
