"""``python -m polycopy_actors tail`` as a user runs it beside a running tier: each new trade of the
wallets asked for is printed as it lands (real PostgreSQL, the simulator, a real child process)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import pytest

from polycopy_actors.simulator import SimConfig, Simulator, World
from tests.helpers import Running, cli_env, fast_settings, follow, wait_for


@pytest.mark.timeout(90)
def test_tail_prints_each_new_trade_of_the_wallets_asked_for_and_stops_on_ctrl_c(db):
    world = World(seed=81, markets=3, wallets=3)
    sim = Simulator(world, SimConfig(seed=81, stream_delay_seconds=0.3)).start()
    watched, other = world.wallets[0], world.wallets[1]
    follow(db, world.wallets)
    lines: list[str] = []
    # The wallet in mixed case, as users paste it: stored and matched lowercase.
    proc = subprocess.Popen([sys.executable, "-m", "polycopy_actors", "tail", "--wallet", "0x" + watched[2:].upper(),
                             "--tier", "hot"], env=cli_env(db, sim), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    market = world.open_markets()[0]
    try:
        with Running(fast_settings(sim), db):
            wait_for(lambda: any("waiting for trades" in ln for ln in lines), 20, "tail listening")
            world.trade(other, market, 0, "BUY", 11)
            fill = world.trade(watched, market, 1, "BUY", 7)
            wait_for(lambda: any(watched in ln and " BUY " in ln for ln in lines), 20, "the watched wallet's trade",
                     lambda: "\n".join(lines))
            world.trade(watched, market, 1, "SELL", 3)
            wait_for(lambda: any(watched in ln and " SELL " in ln for ln in lines), 20, "its sale")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
            reader.join(timeout=5)
            assert proc.stdout is not None and proc.stderr is not None
            proc.stdout.close()
            stderr = proc.stderr.read()
            proc.stderr.close()
            sim.stop()
    assert code == 0, stderr
    printed = [ln for ln in lines if ln.startswith(tuple("0123456789"))]
    assert all(watched in ln and other not in ln for ln in printed), printed
    buy = next(ln for ln in printed if " BUY " in ln)
    assert " 7 @ " in buy and fill.market.question[:20] in buy and "stored" in buy
    assert "Traceback" not in stderr
