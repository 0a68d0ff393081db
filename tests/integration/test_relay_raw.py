"""Raw-protocol relay exchanges: exact reply sequences for what drivers send, around the
16 KiB buffer block (a Parse/Bind held whole that grew the buffer used to lose bytes)."""
import time

import pytest

from conftest import APP_PW
from harness import RawPg, SYNC, m_bind, m_execute, m_parse, parse_data_row


@pytest.mark.parametrize("n", [16000, 17000, 40000])
@pytest.mark.parametrize("named", ["s1", ""])
@pytest.mark.parametrize("split", [False, True])
def test_parse_bind_around_the_buffer_block(make_sluice, n, named, split):
    s = make_sluice(pool_mode="transaction")
    r = RawPg("127.0.0.1", s.port, timeout=30)
    try:
        r.login("app", APP_PW, "app")
        data = (m_parse(named, "SELECT length($1::text)") + m_bind("", named, (b"x" * n,))
                + m_execute() + SYNC)
        if split:
            r.send(data[:100])
            time.sleep(0.05)  # (only so that Sluice reads the batch in two pieces)
            r.send(data[100:])
        else:
            r.send(data)
        msgs = []
        while not msgs or msgs[-1][0] != b"Z":
            m = r.read_msg()
            assert m is not None, msgs
            msgs.append(m)
        assert [k for k, _ in msgs] == [b"1", b"2", b"D", b"C", b"Z"], msgs
        assert parse_data_row(msgs[2][1]) == [str(n)]
    finally:
        r.terminate()
