"""Decisions made before any upstream call: which task a request is (tasks), which candidates
serve it and in what order (scoring, capabilities), and whether its prompt fits (context).
Each part is plain functions over the snapshot's targets; none calls an upstream or settles."""
