"""`bundlerec loadtest`: realistic load on a running gateway, ranker or candidate service, open or
closed loop, with a step search for the highest rate under a p99 objective, and the floor (the same
topology with empty handlers) measured in the same run. See docs/loadtest.md.

workload.py builds requests from a dataset, driver.py sends them, floor.py runs the empty services,
report.py summarizes and draws, command.py is the command line."""
