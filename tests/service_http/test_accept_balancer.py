"""Pre-forked workers sharing one socket spread keep-alive connections evenly (AcceptBalancer).

Two event-loop servers in this process stand for two workers: they share one listening socket
and one balancer's shared memory, each with its own slot, as ``run_workers(balanced=True)``
sets them up after the fork. Real loopback connections.
"""

from __future__ import annotations

import copy
import socket
import time

import requests

from service_http.aserver import AsyncServer, bind_socket
from service_http.prefork import AcceptBalancer


def _hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_two_workers_on_one_socket_take_turns_so_keep_alive_clients_spread_evenly():
    # GIVEN two servers ("workers") on one shared socket, each with its slot of one balancer
    sock = bind_socket("127.0.0.1", 0)
    sock.listen(1024)
    shared = AcceptBalancer(2)
    balancers = [copy.copy(shared).bind(0), copy.copy(shared).bind(1)]
    servers = [AsyncServer(_hello, sock=sock, balancer=b).start() for b in balancers]
    port = sock.getsockname()[1]
    try:
        # WHEN 16 clients connect one after the other and stay connected
        clients = []
        for _ in range(16):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            time.sleep(0.01)
        # THEN each worker holds 8 of them (counted in shared memory and in its own table)
        assert _wait_for(lambda: shared.counts() == (8, 8)), shared.counts()
        assert [len(s.connections) for s in servers] == [8, 8]
        # AND every connection is served
        for c in clients:
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.recv(1024).startswith(b"HTTP/1.1 200")
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).text == "hello"
        # AND once the clients leave, the counts go back to zero
        for c in clients:
            c.close()
        assert _wait_for(lambda: shared.counts() == (0, 0)), shared.counts()
    finally:
        for server in servers:
            server.stop()


def test_a_worker_that_is_not_accepting_does_not_hold_the_others_back():
    # GIVEN a balancer of two workers where only worker 0 is live (1 is loading, hung or dead)
    shared = AcceptBalancer(2, stale_s=0.2)
    zero, one = copy.copy(shared).bind(0), copy.copy(shared).bind(1)
    # WHEN worker 0 already holds connections and worker 1 holds none
    zero.add(3)
    # THEN worker 0 may still accept: a worker without a fresh heartbeat does not count
    assert zero.my_turn()
    # AND once worker 1 is live (it stamps itself when it asks), worker 0 waits for it
    assert one.my_turn()
    assert not zero.my_turn()
    # AND when worker 1 stops stamping, worker 0 takes connections again
    time.sleep(0.3)
    assert zero.my_turn()
