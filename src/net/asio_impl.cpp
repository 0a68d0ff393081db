// Asio is compiled once, here (BOOST_ASIO_SEPARATE_COMPILATION): every other translation
// unit only includes its headers. CI machines have two cores.
#include <boost/asio/impl/src.hpp>
