-- Case 3: long-lived keep-alive connections, cheap requests.  Connections per
-- worker are read from /proc by the harness (requests per worker say little here).
wrk.method = "GET"
wrk.path = "/"
