"""RlayVectorEnv's collaborators (rlay/vector.py is the gymnasium API over them; docs/architecture.md,
"Inside the trainer"):

- lease.py: the slots a trainer holds, by row, grouped by the worker that hosts them;
- obs_buffer.py: the batch of the envs' last observations, where replies are copied;
- transport.py: batched calls to the broker, one part per worker, and their answers;
- gather.py: the synchronous API's calls, each answered in one reply;
- first_ready.py: envpool-style send/recv, results as envs finish;
- replace.py: what happens to envs whose worker is lost (on_worker_failure="replace").
"""
