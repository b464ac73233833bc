-- wrk: POST one 10-token sentence (the W1 sentence) to /embed.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"inputs": [["if", "see", "am", "family", "about", "get", "great", "were", "follow", "mountain"]]}'
