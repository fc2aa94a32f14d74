-- Case 1: a new connection per request, cheap requests ("/" names its worker).
wrk.method = "GET"
wrk.path = "/"
wrk.headers["Connection"] = "close"
count_workers = true
