"""cluster: running the steps on a Ray cluster — `ray job submit` launching, the job chain of
the main job, job listing and logs.

Layer 6: may import `loop` and everything below it.
"""
