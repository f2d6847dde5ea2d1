// The image-worker example app: sign in, insert a job, watch it over Supabase Broadcast, cancel it.
//
// Everything it needs from the backend is in the worker's contract (docs/contract.md, v2):
//   * insert into public.jobs with the user's JWT: prompt, aspect_ratio (RLS: own rows only);
//   * the database broadcasts every status/progress change as event `job_update` on the
//     private topic `jobs:<user id>`: {id, status, progress, image_url, thumbnail_url, error_message};
//   * rpc cancel_job(job_id) -> the status after the call.

const config = readConfig()
// The UMD build defines the global `supabase` (the library); `client` is our project's client.
const client = window.supabase.createClient(config.supabaseUrl, config.anonKey)

const jobs = new Map() // job id -> the latest row we know
let channel = null
let userId // undefined until the first auth event, then the user's id or null

const $ = (selector) => document.querySelector(selector)

// -- configuration: ?supabaseUrl=…&anonKey=… or config.js --------------------------------------

function readConfig() {
  const query = new URLSearchParams(location.search)
  const file = window.IMAGE_WORKER_CONFIG || {}
  const found = {
    supabaseUrl: query.get('supabaseUrl') || file.supabaseUrl,
    anonKey: query.get('anonKey') || file.anonKey,
  }
  if (!found.supabaseUrl || !found.anonKey) {
    document.body.textContent =
      'No Supabase project configured: copy config.example.js to config.js, or open this page ' +
      'with ?supabaseUrl=…&anonKey=…'
    throw new Error('missing configuration')
  }
  return found
}

// -- signing in and out --------------------------------------------------------------------------

$('#sign-in').addEventListener('submit', async (event) => {
  event.preventDefault()
  const { error } = await client.auth.signInWithPassword({
    email: $('#email').value,
    password: $('#password').value,
  })
  if (error) notify(error.message)
})

$('#sign-in-anonymously').addEventListener('click', async () => {
  const { error } = await client.auth.signInAnonymously()
  if (error) notify(error.message)
})

$('#sign-out').addEventListener('click', () => client.auth.signOut())

client.auth.onAuthStateChange((event, session) => {
  // Calling other supabase methods inside this callback can deadlock: defer the work.
  setTimeout(() => showSession(session), 0)
})

async function showSession(session) {
  const user = session?.user ?? null
  if ((user?.id ?? null) === userId) return
  userId = user?.id ?? null
  if (channel) {
    await client.removeChannel(channel)
    channel = null
  }
  jobs.clear()
  $('#jobs').replaceChildren()
  $('#signed-out').hidden = Boolean(user)
  $('#signed-in').hidden = !user
  if (!user) return
  $('#who').textContent = user.email || 'a guest'
  await watchJobs(user.id)
}

// -- watching: Broadcast on the private topic jobs:<user id> -------------------------------------

async function watchJobs(id) {
  await client.realtime.setAuth() // the channel joins with the user's JWT (Realtime Authorization)
  channel = client
    .channel(`jobs:${id}`, { config: { private: true } })
    .on('broadcast', { event: 'job_update' }, ({ payload }) => {
      update(payload)
      window.dispatchEvent(new CustomEvent('job-update', { detail: payload }))
    })
    .subscribe((status, err) => {
      const live = $('#live')
      live.dataset.state = status
      live.textContent = status === 'SUBSCRIBED' ? 'live' : status.toLowerCase().replace('_', ' ')
      if (err) notify(err.message)
      // Messages sent while we were not subscribed are not replayed: read the jobs again.
      if (status === 'SUBSCRIBED') loadJobs()
    })
}

async function loadJobs() {
  const { data, error } = await client
    .from('jobs')
    .select('id, prompt, aspect_ratio, status, progress, image_url, thumbnail_url, error_message')
    .order('created_at', { ascending: false })
    .limit(20)
  if (error) return notify(error.message)
  for (const row of data.reverse()) update(row, { read: true })
}

// -- submitting and cancelling -------------------------------------------------------------------

$('#submit').addEventListener('submit', async (event) => {
  event.preventDefault()
  const { data, error } = await client
    .from('jobs')
    .insert({ prompt: $('#prompt').value, aspect_ratio: $('#aspect-ratio').value })
    .select('id, prompt, aspect_ratio, status, progress, image_url, thumbnail_url, error_message')
    .single()
  if (error) return notify(error.message)
  $('#prompt').value = ''
  update(data, { read: true })
})

async function cancel(id) {
  const { data, error } = await client.rpc('cancel_job', { job_id: id })
  if (error) return notify(error.message)
  update({ id, status: data }, { read: true }) // 'cancelled', or 'running' until the worker stops
}

// -- rendering -----------------------------------------------------------------------------------

// Where a status sits in a job's life: a job only moves forward (a replay starts it afresh).
const STAGE = { pending: 0, running: 1, complete: 2, failed: 2, cancelled: 2 }

// A read (the list, an insert's or a cancel's answer) can be older than updates that already
// arrived over Broadcast: it may fill in the prompt, never move the job backwards. Broadcast
// updates come in commit order and always apply.
function isStale(row, known) {
  if (!known || row.status === undefined) return false
  const [a, b] = [STAGE[row.status], STAGE[known.status]]
  return a < b || (a === b && (row.progress ?? 0) < (known.progress ?? 0))
}

function update(change, { read = false } = {}) {
  const known = jobs.get(change.id)
  if (read && isStale(change, known)) {
    const { status, progress, image_url, thumbnail_url, error_message, ...rest } = change
    change = rest
  }
  const job = { ...known, ...change }
  jobs.set(job.id, job)
  let card = document.querySelector(`[data-job-id="${job.id}"]`)
  if (!card) {
    card = $('#job-template').content.firstElementChild.cloneNode(true)
    card.dataset.jobId = job.id
    card.querySelector('.cancel').addEventListener('click', () => cancel(job.id))
    $('#jobs').prepend(card)
  }
  const finished = ['complete', 'failed', 'cancelled'].includes(job.status)
  card.dataset.status = job.status
  card.querySelector('.prompt').textContent = job.prompt ?? ''
  card.querySelector('.ratio').textContent = job.aspect_ratio ?? ''
  card.querySelector('.status').textContent = `${job.status} · ${job.progress ?? 0}%`
  card.querySelector('progress').value = job.progress ?? 0
  card.querySelector('.cancel').hidden = finished
  const error = card.querySelector('.error')
  error.hidden = !job.error_message
  error.textContent = job.error_message ?? ''
  if (job.status === 'complete' && job.image_url) {
    card.querySelector('.result').hidden = false
    card.querySelector('.image-link').href = job.image_url
    card.querySelector('.image').src = job.image_url
    card.querySelector('.thumbnail').src = job.thumbnail_url
  }
  if (!read) {
    const step = document.createElement('li')
    step.textContent = `${new Date().toLocaleTimeString()} ${change.status} ${change.progress}%`
    card.querySelector('.timeline').append(step)
  }
}

function notify(message) {
  const notice = $('#notice')
  notice.textContent = message
  notice.hidden = false
  setTimeout(() => (notice.hidden = true), 6000)
}
