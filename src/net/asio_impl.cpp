// Asio is compiled once, here (BOOST_ASIO_SEPARATE_COMPILATION): every other translation
// unit only includes its headers. CI machines have two cores.
#include <boost/asio/impl/src.hpp>
// Asio's SSL layer, used by client and server TLS (net/stream) and rediss://.
#include <boost/asio/ssl/impl/src.hpp>
