"""Runtime plumbing the method runs on: params and paths, run directories, caches, locks, worker processes,
progress events and fault points.  Nothing here knows what a thought or an E-step is."""
